"""The signal sidecar: newline-delimited JSON on a Unix socket, fed by an on-disk outbox.

The pipeline appends signals to the outbox (`outbox.publish`) and never waits on anything
else; the always-on server (`server.main`) tails the outbox and fans the lines out to
subscribers; `client` is the small library and `signalbox tail` behind it. `protocol` holds
the message formats all three share.
"""

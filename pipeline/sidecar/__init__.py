"""The signal sidecar: newline-delimited JSON on a Unix socket, fed by an on-disk outbox.

The pipeline appends signals to the outbox (`outbox.publish`) and never waits on anything
else; `segments` holds the outbox's files and reads them; the always-on server (`server.main`,
with `hub` and `subscriber`) tails the outbox and fans the lines out to subscribers; `client`
is the small library and `signalbox tail` behind it. `protocol` holds the message formats all
three share.
"""

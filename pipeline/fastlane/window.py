"""One symbol's bars of one timeframe, oldest first, as numpy columns that grow in place: what
the fast lane keeps between minutes (appending a bar costs no copy of the window).

Values are float64 with NaN for NULL, as `symbol_series` hands them to the signal engine
(n_1m and complete included, as 0/1); open and close times are epoch ms; `whole` and `joined`
are the history marks (pipeline.indicators.history) the indicators are computed in segments by.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from pipeline.candles.timeframes import Timeframe
    from pipeline.strategy.signal_inputs import Series

_TIMES = ("open_ms", "close_ms")
_FLAGS = ("whole", "joined")


class Window:
    """Bars of one (symbol, timeframe), sorted by open time, unique."""

    def __init__(self, tf: Timeframe, names: Sequence[str]) -> None:
        import numpy as np

        self.tf = tf
        self.names = tuple(names)
        self.n = 0
        self._cols: dict[str, np.ndarray] = {
            **{k: np.empty(0, dtype=np.int64) for k in _TIMES},
            **{k: np.empty(0, dtype=bool) for k in _FLAGS},
            **{k: np.empty(0, dtype=np.float64) for k in self.names},
        }

    def __len__(self) -> int:
        return self.n

    def col(self, name: str) -> np.ndarray:
        """A column's bars (a view: valid until the next append)."""
        return self._cols[name][: self.n]

    @property
    def open_ms(self) -> np.ndarray:
        return self.col("open_ms")

    @property
    def close_ms(self) -> np.ndarray:
        return self.col("close_ms")

    def extend(self, columns: Mapping[str, Any]) -> None:
        """Append bars (every column given, equal lengths, opening after the last bar)."""
        import numpy as np

        k = len(columns["open_ms"])
        if k == 0:
            return
        if self.n and int(columns["open_ms"][0]) <= int(self._cols["open_ms"][self.n - 1]):
            raise ValueError(f"{self.tf.name} bar appended out of order")
        need = self.n + k
        if need > len(self._cols["open_ms"]):
            cap = max(need, 2 * len(self._cols["open_ms"]), 64)
            for name, arr in self._cols.items():
                grown = np.empty(cap, dtype=arr.dtype)
                grown[: self.n] = arr[: self.n]
                self._cols[name] = grown
        for name, arr in self._cols.items():
            arr[self.n : need] = columns[name]
        self.n = need

    def set_last(self, values: Mapping[str, float]) -> None:
        """Overwrite some value columns of the newest bar."""
        for name, v in values.items():
            self._cols[name][self.n - 1] = v

    def set_from(self, start: int, values: Mapping[str, np.ndarray]) -> None:
        """Overwrite some value columns of bars [start, n)."""
        for name, v in values.items():
            self._cols[name][start : self.n] = v

    def since(self, ms: int) -> int:
        """Index of the first bar opening at or after `ms`."""
        import numpy as np

        return int(np.searchsorted(self.open_ms, ms, "left"))

    def drop_before(self, ms: int) -> None:
        """Forget the bars opening before `ms`."""
        k = self.since(ms)
        if k:
            for arr in self._cols.values():
                arr[: self.n - k] = arr[k : self.n]
            self.n -= k

    def series(self, lo_ms: int, hi_ms: int, names: Sequence[str]) -> Series | None:
        """The bars with open_time >= lo and close_time <= hi (`cut_frames`) as the signal
        engine's input (`symbol_series`), None when there are none."""
        import numpy as np

        from pipeline.strategy.signal_inputs import Series

        a = self.since(lo_ms)
        b = int(np.searchsorted(self.close_ms, hi_ms, "right"))
        if b <= a:
            return None
        return Series(
            self.open_ms[a:b],
            self.col("complete")[a:b] == 1.0,
            {c: self.col(c)[a:b] for c in names},
        )

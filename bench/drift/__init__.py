"""The drift detector's false alarms and detections in a repeated simulation on the embedding data
(``python -m bench.drift``): ``simulate`` draws the windows, ``__main__`` writes ``drift.json`` and
``drift.png``."""

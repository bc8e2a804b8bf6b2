"""Results store: one embedded DuckDB file holding runs, their questions, every sample and measure.

A run is written batch by batch: a batch's samples and its row in ``batches`` are committed in one
transaction, so a crash or a stop keeps every finished batch and a resumed run skips them. A process
killed outright (SIGKILL, power loss) leaves its committed transactions in DuckDB's write-ahead log
(``<file>.wal``); the next open replays it. A file another process holds is reported as locked.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd

from explorer.errors import InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (run_id VARCHAR PRIMARY KEY, created TIMESTAMP, name VARCHAR, model VARCHAR,
    settings JSON, status VARCHAR);
CREATE TABLE IF NOT EXISTS questions (run_id VARCHAR, question_index INTEGER, question VARCHAR, answers JSON);
CREATE TABLE IF NOT EXISTS batches (run_id VARCHAR, batch_key VARCHAR, PRIMARY KEY (run_id, batch_key));
CREATE TABLE IF NOT EXISTS samples (run_id VARCHAR, batch_key VARCHAR, kind VARCHAR, temperature DOUBLE,
    question_index INTEGER, variant INTEGER, sample_index INTEGER, prompt VARCHAR, text VARCHAR,
    token_ids INTEGER[], token_log_probs DOUBLE[], token_entropies DOUBLE[]);
CREATE TABLE IF NOT EXISTS measures (run_id VARCHAR, question_index INTEGER, temperature DOUBLE,
    measure VARCHAR, value DOUBLE);
"""
_OPENING = threading.Lock()
SAMPLE_COLUMNS = ["kind", "temperature", "question_index", "variant", "sample_index", "prompt", "text",
                  "token_ids", "token_log_probs", "token_entropies"]


def default_db_path() -> Path:
    base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return base / "entropy-explorer" / "runs.duckdb"


class ResultsStore:
    """A DuckDB results file. Opening a file another process holds, or one that is not a DuckDB
    database, raises :class:`InputError` and leaves the file untouched."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path or default_db_path())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            with _OPENING:   # connections of one process share the database: create its tables one at a time
                self._con = duckdb.connect(str(self.path))
                self._con.execute(SCHEMA)
        except duckdb.IOException as err:
            raise InputError(f"The results database {self.path} is in use by another process (locked) "
                             f"or cannot be opened: {str(err).splitlines()[0]}") from err
        except duckdb.Error as err:
            raise InputError(f"{self.path} is not a valid results database (corrupt or another format): "
                             f"{str(err).splitlines()[0]}") from err

    def close(self) -> None:
        self._con.close()

    def _query(self, sql: str, params=()) -> pd.DataFrame:
        with self._lock:
            return self._con.execute(sql, params).df()

    # ------------------------------------------------------------------ runs
    def create_run(self, model: str, settings: dict, questions: pd.DataFrame, name: str = "") -> str:
        run_id = uuid.uuid4().hex[:12]
        rows = [(run_id, i, q, json.dumps(a)) for i, (q, a) in enumerate(zip(questions["question"], questions["answers"]))]
        with self._lock:
            self._con.execute("BEGIN")
            self._con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, 'created')",
                              (run_id, datetime.now(timezone.utc).replace(tzinfo=None), name or run_id, model,
                               json.dumps(settings)))
            self._con.executemany("INSERT INTO questions VALUES (?, ?, ?, ?)", rows)
            self._con.execute("COMMIT")
        return run_id

    def set_status(self, run_id: str, status: str) -> None:
        with self._lock:
            self._con.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    def update_settings(self, run_id: str, **values) -> None:
        """Add or replace entries of a run's stored settings (e.g. the equivalence actually used)."""
        settings = {**self.run(run_id)["settings"], **values}
        with self._lock:
            self._con.execute("UPDATE runs SET settings = ? WHERE run_id = ?", (json.dumps(settings), run_id))

    def runs(self) -> pd.DataFrame:
        """Every run with its settings and the number of stored answers, newest first."""
        return self._query("""SELECT r.run_id, r.name, r.created, r.model, r.status, r.settings,
            (SELECT count(*) FROM samples s WHERE s.run_id = r.run_id AND s.kind = 'answer') AS answers
            FROM runs r ORDER BY r.created DESC""")

    def run(self, run_id: str) -> dict:
        row = self._query("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if row.empty:
            raise InputError(f"No run {run_id!r} in {self.path}.")
        record = row.iloc[0].to_dict()
        record["settings"] = json.loads(record["settings"])
        return record

    def questions(self, run_id: str) -> pd.DataFrame:
        table = self._query("SELECT question, answers FROM questions WHERE run_id = ? ORDER BY question_index", (run_id,))
        return table.assign(answers=table["answers"].map(json.loads))

    # ------------------------------------------------------------------ batches and samples
    def finished_batches(self, run_id: str) -> set[str]:
        return set(self._query("SELECT batch_key FROM batches WHERE run_id = ?", (run_id,))["batch_key"])

    def add_batch(self, run_id: str, batch_key: str, samples: pd.DataFrame) -> None:
        """Store one finished batch atomically (its samples and its marker); a stored batch is kept."""
        frame = samples[SAMPLE_COLUMNS].assign(run_id=run_id, batch_key=batch_key)
        with self._lock:
            self._con.execute("BEGIN")
            try:
                if self._con.execute("SELECT 1 FROM batches WHERE run_id = ? AND batch_key = ?",
                                     (run_id, batch_key)).fetchone() is None:
                    self._con.register("new_samples", frame)
                    self._con.execute("INSERT INTO samples SELECT run_id, batch_key, " + ", ".join(SAMPLE_COLUMNS)
                                      + " FROM new_samples")
                    self._con.unregister("new_samples")
                    self._con.execute("INSERT INTO batches VALUES (?, ?)", (run_id, batch_key))
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise

    def samples(self, run_id: str, kind: str | None = None) -> pd.DataFrame:
        sql = "SELECT " + ", ".join(SAMPLE_COLUMNS) + " FROM samples WHERE run_id = ?"
        params: tuple = (run_id,)
        if kind is not None:
            sql, params = sql + " AND kind = ?", (run_id, kind)
        return self._query(sql + " ORDER BY kind, temperature, question_index, variant, sample_index", params)

    # ------------------------------------------------------------------ measures
    def replace_measures(self, run_id: str, measures: pd.DataFrame) -> None:
        frame = measures[["question_index", "temperature", "measure", "value"]].assign(run_id=run_id)
        with self._lock:
            self._con.execute("BEGIN")
            self._con.execute("DELETE FROM measures WHERE run_id = ?", (run_id,))
            self._con.register("new_measures", frame)
            self._con.execute("INSERT INTO measures SELECT run_id, question_index, temperature, measure, value "
                              "FROM new_measures")
            self._con.unregister("new_measures")
            self._con.execute("COMMIT")

    def measures(self, run_id: str) -> pd.DataFrame:
        return self._query("SELECT question_index, temperature, measure, value FROM measures WHERE run_id = ? "
                           "ORDER BY measure, question_index, temperature", (run_id,))

    def export_parquet(self, run_id: str, folder: str | Path) -> list[Path]:
        """Write the run's questions, samples and measures as Parquet files in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for table, frame in (("questions", self.questions(run_id)), ("samples", self.samples(run_id)),
                             ("measures", self.measures(run_id))):
            path = folder / f"{run_id}_{table}.parquet"
            frame.assign(**({"answers": frame["answers"].map(json.dumps)} if table == "questions" else {})) \
                .to_parquet(path)
            paths.append(path)
        return paths

    def export_parquet_zip(self, run_id: str) -> bytes:
        """The run's three Parquet files (questions, samples, measures) in one zip archive, as bytes."""
        self.run(run_id)   # unknown run: InputError
        buffer = io.BytesIO()
        with tempfile.TemporaryDirectory(prefix="export-") as folder, \
                zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in self.export_parquet(run_id, folder):
                archive.write(path, arcname=path.name)
        return buffer.getvalue()

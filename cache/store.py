"""The RPO trajectory cache: one current response per training question, versioned by optimizer step, in SQLite.

Storage choices, and why:
- SQLite (standard library) in WAL mode: a commit is atomic, a process killed at any instant (SIGKILL) leaves the
  database at its last commit, and readers (the `rpo-cache` CLI) read a consistent snapshot while the trainer writes.
- One transaction per `put_many` call (= one step's cache update): a step is either fully in the cache or not at all.
- `synchronous=FULL` by default: each commit is fsynced, so a commit survives power loss too, and a checkpoint written
  after the cache commit can never point at a cache state the disk lost. It costs one fsync per step, which is
  negligible next to a training step. (NORMAL is also safe against SIGKILL in WAL mode; it may lose the last commits
  on power loss, which `verify_state` would then report on resume.)
- Versioned rows instead of updates in place: step s writes new rows with version_step = s. The current entry of a
  question is its row with the largest version_step. Resuming from the checkpoint of step s deletes the rows written
  after s (`rollback_to`), so the resumed run sees the cache exactly as it was at step s without copying the database
  into every checkpoint. Initialization writes version_step = 0 (the initial policy); training steps start at 1.
- Token ids as little-endian int32 BLOBs, logprobs as float64 BLOBs: compact, portable, and an exact round trip of the
  Python floats the engine returns (12 bytes per response token).
- A sha256 digest per row, written with the row: `state()` summarizes the current view in one checksum a checkpoint can
  record, and `verify()` re-reads every row and checks it against its digest.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:
    from rpo_core.common.types import Sample

log = logging.getLogger(__name__)

FORMAT_NAME = "rpo-trajectory-cache"
FORMAT_VERSION = 1
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
INIT_VERSION_STEP = 0  # rows written by cache initialization (the initial policy)

_IDS_DTYPE = np.dtype("<i4")
_LOGPROBS_DTYPE = np.dtype("<f8")
_FP_PREFIX = "fingerprint."

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE entries (
    uid                TEXT    NOT NULL,
    version_step       INTEGER NOT NULL,  -- training step whose cache update wrote this row (0 = initialization)
    prompt_ids         BLOB    NOT NULL,  -- little-endian int32
    response_ids       BLOB    NOT NULL,  -- little-endian int32
    logprobs           BLOB    NOT NULL,  -- little-endian float64, one per response token (behaviour policy)
    prompt_len         INTEGER NOT NULL,
    response_len       INTEGER NOT NULL,
    prefix_len         INTEGER NOT NULL,  -- leading response tokens that came from an older cached response
    prefix_policy_step INTEGER,           -- policy step that generated that prefix (NULL when prefix_len = 0)
    finished           INTEGER NOT NULL,  -- 0 when generation hit the token limit
    reward             REAL,
    policy_step        INTEGER NOT NULL,  -- optimizer step of the policy that generated the (suffix of the) response
    created_at         REAL    NOT NULL,  -- unix time
    digest             BLOB    NOT NULL,  -- sha256 of the row's content, see _row_digest
    PRIMARY KEY (uid, version_step)
);
CREATE INDEX entries_by_version_step ON entries (version_step);
"""

_ENTRY_COLUMNS = (
    "uid, version_step, prompt_ids, response_ids, logprobs, prompt_len, response_len, prefix_len, "
    "prefix_policy_step, finished, reward, policy_step, created_at, digest"
)


class CacheError(Exception):
    """Base class of the cache's errors."""


class NotACacheError(CacheError):
    """The path exists but is not an RPO trajectory cache."""


class CacheMismatchError(CacheError):
    """The cache was built for another model, tokenizer, dataset or format."""


class CacheStateError(CacheError):
    """A write or a resume that would mix cache states of different runs or steps."""


@dataclass(frozen=True)
class CacheEntry:
    """One cached response of one question."""

    uid: str
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # behaviour logprob of each response token
    reward: Optional[float]
    policy_step: int  # optimizer step of the policy that generated the response (its suffix, for RPO responses)
    created_at: float  # unix time
    prefix_len: int = 0  # leading response tokens reused from an older cached response (RPO)
    prefix_policy_step: Optional[int] = None  # policy step that generated that prefix
    finished: bool = True  # False when generation hit the token limit
    version_step: Optional[int] = None  # set on entries read from the cache; put_many takes the step as an argument

    @staticmethod
    def from_sample(
        sample: "Sample", reward: Optional[float] = None, created_at: Optional[float] = None
    ) -> "CacheEntry":
        """The cache entry of a generated sample (full response: cached prefix + new suffix)."""
        return CacheEntry(
            uid=sample.uid,
            prompt_ids=list(sample.prompt_ids),
            response_ids=list(sample.response_ids),
            logprobs=list(sample.behavior_logprobs),
            reward=reward,
            policy_step=sample.policy_step,
            created_at=time.time() if created_at is None else created_at,
            prefix_len=sample.prefix_len,
            prefix_policy_step=sample.prefix_policy_step if sample.prefix_len > 0 else None,
            finished=sample.finished,
        )


# ---------------------------------------------------------------- encoding

def encode_ids(ids: Sequence[int], what: str = "token ids") -> bytes:
    """Token ids -> little-endian int32 bytes; refuses non-integers and ids outside [0, 2^31)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence, got shape {arr.shape}")
    if arr.size == 0:
        return b""
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > np.iinfo(_IDS_DTYPE).max:
        raise ValueError(f"{what} out of range [0, 2^31): min {arr.min()}, max {arr.max()}")
    return arr.astype(_IDS_DTYPE).tobytes()


def decode_ids(blob: bytes) -> list[int]:
    return np.frombuffer(blob, dtype=_IDS_DTYPE).tolist()


def encode_logprobs(logprobs: Sequence[float]) -> bytes:
    """Logprobs -> little-endian float64 bytes (exact for Python floats)."""
    arr = np.asarray(logprobs, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"logprobs must be a flat sequence, got shape {arr.shape}")
    return arr.astype(_LOGPROBS_DTYPE).tobytes()


def decode_logprobs(blob: bytes) -> list[float]:
    return np.frombuffer(blob, dtype=_LOGPROBS_DTYPE).tolist()


def _row_digest(uid: str, prompt: bytes, response: bytes, logprobs: bytes, scalars: Sequence[Any]) -> bytes:
    """sha256 over the row's content; blobs are length-prefixed so no two rows share an encoding."""
    h = hashlib.sha256()
    uid_bytes = uid.encode("utf-8")
    h.update(struct.pack("<4q", len(uid_bytes), len(prompt), len(response), len(logprobs)))
    for part in (uid_bytes, prompt, response, logprobs):
        h.update(part)
    h.update(json.dumps(list(scalars)).encode("utf-8"))  # float repr round-trips exactly
    return h.digest()


def _digest_scalars(entry: CacheEntry) -> tuple:
    reward = None if entry.reward is None else float(entry.reward)
    return (reward, int(entry.policy_step), int(entry.prefix_len), entry.prefix_policy_step, bool(entry.finished),
            float(entry.created_at))


# ---------------------------------------------------------------- the cache

class TrajectoryCache:
    """Disk-backed, crash-safe cache of one response per question, versioned by training step.

    Opened with a fingerprint (model, tokenizer, dataset, ...): a new file records it, an existing file must match it
    exactly or `CacheMismatchError` is raised. Pass the fingerprint of the *initial* policy (the base model), not of
    a resumed checkpoint: the cache belongs to the run, which starts from the base model.

    One writer (the trainer, rank 0) at a time; any number of read-only readers (`readonly=True`) may read meanwhile.
    """

    def __init__(
        self,
        path: Union[str, Path],
        fingerprint: Optional[Mapping[str, Any]] = None,
        *,
        readonly: bool = False,
        synchronous: str = "FULL",
        busy_timeout_s: float = 60.0,
    ):
        self.path = Path(path)
        self.readonly = readonly
        self._written_steps: set[int] = set()  # training steps this handle wrote (see put_many)
        synchronous = str(synchronous).upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        if fingerprint is None and not readonly:
            raise ValueError("a writable TrajectoryCache needs a fingerprint (model, tokenizer, dataset, ...)")
        wanted = None if fingerprint is None else _normalize_fingerprint(fingerprint)

        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"no trajectory cache at {self.path}")
            uri = f"file:{self.path.resolve().as_posix()}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=busy_timeout_s)
        else:
            if self.path.exists() and not self.path.is_file():
                raise NotACacheError(f"{self.path} is not a file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=busy_timeout_s)
        try:
            self._open(wanted, synchronous)
        except BaseException:
            self._conn.close()
            raise

    def _open(self, wanted: Optional[dict[str, str]], synchronous: str) -> None:
        try:
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:  # e.g. "file is not a database"
            raise NotACacheError(f"{self.path} is not an RPO trajectory cache (SQLite says: {e})") from e
        if tables and not {"meta", "entries"} <= tables:  # checked before touching the file's journal mode
            raise NotACacheError(f"{self.path} is an SQLite database but not an RPO trajectory cache "
                                 f"(tables: {sorted(tables)})")
        if not tables and self.readonly:
            raise NotACacheError(f"{self.path} is not an RPO trajectory cache (empty database)")
        if not self.readonly:
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise CacheError(f"could not put {self.path} in WAL mode (got {mode!r}); is the filesystem local?")
            self._conn.execute(f"PRAGMA synchronous = {synchronous}")
            if not tables:
                self._create(wanted)
        meta = self._meta()
        if meta.get("format") != FORMAT_NAME:
            raise NotACacheError(f"{self.path} is not an RPO trajectory cache (format {meta.get('format')!r})")
        if meta.get("format_version") != str(FORMAT_VERSION):
            raise CacheMismatchError(
                f"{self.path} has cache format version {meta.get('format_version')}, this code reads version "
                f"{FORMAT_VERSION}. Use a new cache path or delete {self.path} to rebuild it."
            )
        if wanted is not None:
            self._check_fingerprint(wanted, self.fingerprint)

    def _create(self, fingerprint: dict[str, str]) -> None:
        with self._transaction(write=True):
            # Another process may have created it between our check and the write lock.
            if self._conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0]:
                return
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            rows = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "created_at": repr(time.time())}
            rows.update({_FP_PREFIX + k: v for k, v in fingerprint.items()})
            self._conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows.items())
        log.info("created trajectory cache %s", self.path)

    def _check_fingerprint(self, wanted: dict[str, str], stored: dict[str, str]) -> None:
        if wanted == stored:
            return
        lines = [
            f"  {k}: cache has {stored.get(k, '<absent>')!r}, this run has {wanted.get(k, '<absent>')!r}"
            for k in sorted(set(wanted) | set(stored))
            if wanted.get(k) != stored.get(k)
        ]
        raise CacheMismatchError(
            f"trajectory cache {self.path} was built for a different setup:\n" + "\n".join(lines) + "\n"
            f"Its token ids and responses belong to that setup, so it is not reused. Point the run at a new cache "
            f"path (cache.path=...) or delete {self.path} (with its -wal and -shm files) to rebuild it."
        )

    # ------------------------------------------------------------ plumbing

    def _transaction(self, write: bool = False) -> "_Transaction":
        return _Transaction(self._conn, write)

    def _meta(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT key, value FROM meta"))

    @property
    def fingerprint(self) -> dict[str, str]:
        return {k[len(_FP_PREFIX):]: v for k, v in self._meta().items() if k.startswith(_FP_PREFIX)}

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "TrajectoryCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ reads

    def _max_step(self) -> Optional[int]:
        return self._conn.execute("SELECT max(version_step) FROM entries").fetchone()[0]

    def get_many(self, uids: Sequence[str], at_step: Optional[int] = None) -> dict[str, CacheEntry]:
        """Current entry of each uid: its newest row with version_step <= at_step (any step if None); missing uids absent."""
        bound = _bound(at_step)
        out: dict[str, CacheEntry] = {}
        with self._transaction():  # one snapshot for the whole batch
            for uid in dict.fromkeys(uids):
                row = self._conn.execute(
                    f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE uid = ? AND version_step <= ? "
                    "ORDER BY version_step DESC LIMIT 1",
                    (uid, bound),
                ).fetchone()
                if row is not None:
                    out[uid] = _row_to_entry(row)
        return out

    def history(self, uid: str) -> list[CacheEntry]:
        """Every stored version of one uid, oldest first."""
        rows = self._conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE uid = ? ORDER BY version_step", (uid,)
        ).fetchall()
        return [_row_to_entry(r) for r in rows]

    def missing(self, uids: Sequence[str]) -> list[str]:
        """The uids (deduplicated, in order) that have no entry at all: what initialization still has to generate."""
        with self._transaction():
            return [
                uid for uid in dict.fromkeys(uids)
                if self._conn.execute("SELECT 1 FROM entries WHERE uid = ? LIMIT 1", (uid,)).fetchone() is None
            ]

    def uids_with_prefix(self, prefix: str, limit: int = 11) -> list[str]:
        rows = self._conn.execute(
            "SELECT DISTINCT uid FROM entries WHERE uid >= ? AND uid < ? ORDER BY uid LIMIT ?",
            (prefix, prefix + "\U0010ffff", limit),
        )
        return [r[0] for r in rows]

    def __len__(self) -> int:
        return self._conn.execute("SELECT count(DISTINCT uid) FROM entries").fetchone()[0]

    def positive_reward_share(self, at_step: Optional[int] = None) -> Optional[float]:
        """Share of the current entries whose stored reward is > 0 (None when no entry has a reward)."""
        with self._transaction():
            share = self._conn.execute(f"SELECT avg(e.reward > 0) FROM entries e WHERE e.reward IS NOT NULL AND "
                                       f"{_CURRENT_ROW_SQL}", (_bound(at_step),)).fetchone()[0]
        return None if share is None else float(share)

    def iter_entries(self, at_step: Optional[int] = None, all_versions: bool = False) -> Iterator[CacheEntry]:
        """Current entries (or every stored row), ordered by uid then version_step, read from one snapshot."""
        if all_versions:
            sql = f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE version_step <= ? ORDER BY uid, version_step"
        else:
            sql = f"SELECT {_ENTRY_COLUMNS} FROM entries e WHERE {_CURRENT_ROW_SQL} ORDER BY uid"
        with self._transaction():
            for row in self._conn.execute(sql, (_bound(at_step),)):
                yield _row_to_entry(row)

    def state(self, at_step: Optional[int] = None) -> dict[str, Any]:
        """What a checkpoint records: newest step in the cache, entry count and a checksum of every current entry."""
        h = hashlib.sha256()
        n = 0
        version_step = None
        with self._transaction():
            rows = self._conn.execute(
                f"SELECT uid, version_step, digest FROM entries e WHERE {_CURRENT_ROW_SQL} ORDER BY uid",
                (_bound(at_step),),
            )
            for uid, step, digest in rows:
                h.update(f"{uid}\t{step}\t".encode("utf-8") + digest + b"\n")
                n += 1
                version_step = step if version_step is None else max(version_step, step)
        return {"version_step": version_step, "num_entries": n, "checksum": h.hexdigest()}

    def verify_state(self, expected: Mapping[str, Any], at_step: Optional[int] = None) -> None:
        """Raise CacheStateError unless the cache (as of at_step) is in the state a checkpoint recorded."""
        actual = self.state(at_step)
        diffs = {k: (expected.get(k), actual.get(k)) for k in ("version_step", "num_entries", "checksum")
                 if expected.get(k) != actual.get(k)}
        if diffs:
            detail = "; ".join(f"{k}: checkpoint recorded {a!r}, cache has {b!r}" for k, (a, b) in diffs.items())
            raise CacheStateError(
                f"trajectory cache {self.path} is not in the state the checkpoint recorded"
                f"{'' if at_step is None else f' at step {at_step}'} ({detail}). It was changed or replaced after "
                "that checkpoint (another run, a compaction past the checkpoint, or a lost commit); resume from a "
                "matching checkpoint or start a new run with a new cache path."
            )

    def verify(self) -> dict[str, int]:
        """SQLite integrity check plus every row re-decoded and checked against its digest; raises on any fault."""
        problems = [r[0] for r in self._conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise CacheError(f"SQLite integrity check of {self.path} failed: {problems[:10]}")
        rows = 0
        with self._transaction():
            for row in self._conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries"):
                entry = _row_to_entry(row)
                blobs = row[2:5]
                if _row_digest(entry.uid, *blobs, _digest_scalars(entry)) != row[13]:
                    raise CacheError(f"entry {entry.uid!r} at step {entry.version_step} does not match its digest")
                if not (len(entry.response_ids) == len(entry.logprobs) == row[6] and len(entry.prompt_ids) == row[5]):
                    raise CacheError(f"entry {entry.uid!r} at step {entry.version_step} has inconsistent lengths")
                rows += 1
        return {"rows": rows, "entries": len(self)}

    # ------------------------------------------------------------ writes

    def put_many(self, entries: Sequence[CacheEntry], version_step: int) -> None:
        """Write one step's cache update (new rows with this version_step) in one atomic transaction."""
        self._put_many(entries, version_step)

    def _put_many(self, entries: Sequence[CacheEntry], version_step: int,
                  meta_add: Optional[Mapping[str, float]] = None) -> None:
        self._require_writable()
        if not isinstance(version_step, (int, np.integer)) or version_step < 0:
            raise ValueError(f"version_step must be an integer >= 0, got {version_step!r}")
        version_step = int(version_step)
        rows = [_entry_to_row(e, version_step) for e in entries]
        uids = [r[0] for r in rows]
        if len(set(uids)) != len(uids):
            dup = sorted({u for u in uids if uids.count(u) > 1})
            raise ValueError(f"put_many got several entries for the same uid(s) {dup[:5]} in one step")
        with self._transaction(write=True):
            newest = self._max_step()
            if newest is not None and version_step < newest:
                raise CacheStateError(
                    f"cannot write step {version_step}: {self.path} already holds step {newest}. A resumed run must "
                    f"call rollback_to(<checkpoint step>) (or restore) before writing."
                )
            if (newest == version_step and version_step != INIT_VERSION_STEP
                    and version_step not in self._written_steps):
                raise CacheStateError(
                    f"cannot write step {version_step}: {self.path} already holds rows of step {version_step} from "
                    f"an earlier run. A resumed run must call rollback_to(<checkpoint step>) before writing."
                )
            try:
                self._conn.executemany(f"INSERT INTO entries ({_ENTRY_COLUMNS}) VALUES "
                                       f"({', '.join('?' * 14)})", rows)
            except sqlite3.IntegrityError as e:
                raise CacheStateError(f"{self.path} already has an entry for one of {uids[:5]}... at step "
                                      f"{version_step} ({e})") from e
            self._add_meta(meta_add or {})
        self._written_steps.add(version_step)

    def _add_meta(self, deltas: Mapping[str, float]) -> None:
        """Add to numeric meta values (the cumulative init cost), inside the caller's transaction if there is one."""
        self._require_writable()
        with self._transaction(write=True):
            for key, delta in deltas.items():
                old = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                new = (float(old[0]) if old else 0.0) + float(delta)
                self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, repr(new)))

    def rollback_to(self, step: int) -> int:
        """Delete every row written after `step` (the cache as it was at that step); returns the rows removed."""
        self._require_writable()
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"rollback step must be an integer >= 0, got {step!r}")
        with self._transaction(write=True):
            removed = self._conn.execute("DELETE FROM entries WHERE version_step > ?", (int(step),)).rowcount
        self._written_steps = {s for s in self._written_steps if s <= step}
        if removed:
            log.info("trajectory cache %s rolled back to step %d: %d rows removed", self.path, step, removed)
        return removed

    def restore(self, step: int, expected_state: Mapping[str, Any]) -> int:
        """Resume: check the cache as of `step` matches the checkpoint's recorded state, then roll back to it.

        The checkpoint of step s must record `state()` taken after step s's `put_many`, so that the state it records
        is the cache as of step s.
        """
        self.verify_state(expected_state, at_step=step)
        return self.rollback_to(step)

    def compact(self, keep_from_step: int) -> int:
        """Delete rows superseded at or before `keep_from_step`; the cache as of any step >= it is unchanged."""
        self._require_writable()
        with self._transaction(write=True):
            removed = self._conn.execute(
                "DELETE FROM entries WHERE EXISTS (SELECT 1 FROM entries n WHERE n.uid = entries.uid "
                "AND n.version_step > entries.version_step AND n.version_step <= ?)",
                (int(keep_from_step),),
            ).rowcount
        return removed

    def _require_writable(self) -> None:
        if self.readonly:
            raise CacheError(f"{self.path} was opened read-only")

    # ------------------------------------------------------------ statistics

    def init_report(self) -> dict[str, float]:
        """Cumulative initialization cost over every (possibly interrupted and resumed) init run."""
        meta = self._meta()
        return {k: float(meta.get(f"init.{k}", 0.0)) for k in ("seconds", "generated_tokens", "entries")}

    def stats(self, at_step: Optional[int] = None) -> dict[str, Any]:
        """Entries, response length, reward distribution and age (in policy steps) of the current entries."""
        with self._transaction():
            cur = self._conn.execute(
                "SELECT response_len, reward, policy_step, version_step, finished, prefix_len, created_at "
                f"FROM entries e WHERE {_CURRENT_ROW_SQL}",
                (_bound(at_step),),
            ).fetchall()
            num_rows = self._conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        out: dict[str, Any] = {
            "path": str(self.path),
            "size_bytes": size,
            "fingerprint": self.fingerprint,
            "num_entries": len(cur),
            "num_rows": num_rows,  # all stored versions
            "version_step": max((r[3] for r in cur), default=None),
            "init": self.init_report(),
        }
        if not cur:
            return out
        length, reward, policy_step, version_step, finished, prefix_len, created = (np.array(c) for c in zip(*cur))
        out["response_len"] = _summary(length.astype(float))
        out["truncated"] = int((finished == 0).sum())
        out["with_prefix"] = int((prefix_len > 0).sum())
        rewards = np.array([r for r in reward if r is not None], dtype=float)
        out["reward"] = {"none": int(len(reward) - len(rewards)), **_summary(rewards), "histogram": _histogram(rewards)}
        newest = int(version_step.max())
        out["age"] = {
            "policy_step_counts": _counts(policy_step),  # how many current entries each policy step produced
            "version_step_counts": _counts(version_step),  # at which step each current entry was written
            "steps_behind_newest": _summary((newest - policy_step).astype(float)),
        }
        out["created_at"] = {"first": float(created.min()), "last": float(created.max())}
        return out


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK on error. A read transaction pins one snapshot (WAL); a write takes the lock."""

    def __init__(self, conn: sqlite3.Connection, write: bool = False):
        self.conn, self.write = conn, write

    def __enter__(self):
        self.nested = self.conn.in_transaction
        if not self.nested:
            self.conn.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
        return self.conn

    def __exit__(self, exc_type, *exc):
        if self.nested:
            return
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")


# The newest row of each uid among rows with version_step <= ?  (uses the (uid, version_step) primary key)
_CURRENT_ROW_SQL = (
    "e.version_step = (SELECT max(n.version_step) FROM entries n WHERE n.uid = e.uid AND n.version_step <= ?1)"
)


def _bound(at_step: Optional[int]) -> int:
    return (1 << 62) if at_step is None else int(at_step)


def _normalize_fingerprint(fingerprint: Mapping[str, Any]) -> dict[str, str]:
    if not fingerprint:
        raise ValueError("the cache fingerprint must name at least the model and the tokenizer")
    out = {}
    for k, v in fingerprint.items():
        if not isinstance(k, str) or not isinstance(v, (str, int, float, bool)):
            raise TypeError(f"fingerprint entries must be str -> str/int/float/bool, got {k!r}: {v!r}")
        out[k] = str(v)
    return out


def _entry_to_row(e: CacheEntry, version_step: int) -> tuple:
    if not isinstance(e.uid, str) or not e.uid:
        raise ValueError(f"cache entry uid must be a non-empty string, got {e.uid!r}")
    if len(e.logprobs) != len(e.response_ids):
        raise ValueError(f"entry {e.uid!r}: {len(e.logprobs)} logprobs for {len(e.response_ids)} response tokens")
    if not 0 <= e.prefix_len <= len(e.response_ids):
        raise ValueError(f"entry {e.uid!r}: prefix_len {e.prefix_len} outside [0, {len(e.response_ids)}]")
    if not 0 <= e.policy_step <= version_step:
        raise ValueError(f"entry {e.uid!r}: policy_step {e.policy_step} must be in [0, version_step={version_step}] "
                         "(a cache update cannot hold responses of a later policy)")
    if e.reward is not None and not math.isfinite(e.reward):
        raise ValueError(f"entry {e.uid!r}: reward must be finite or None, got {e.reward!r}")
    prompt = encode_ids(e.prompt_ids, f"entry {e.uid!r} prompt ids")
    response = encode_ids(e.response_ids, f"entry {e.uid!r} response ids")
    logprobs = encode_logprobs(e.logprobs)
    scalars = _digest_scalars(e)
    reward, policy_step, prefix_len, prefix_policy_step, finished, created_at = scalars
    return (e.uid, version_step, prompt, response, logprobs, len(e.prompt_ids), len(e.response_ids), prefix_len,
            prefix_policy_step, int(finished), reward, policy_step, created_at,
            _row_digest(e.uid, prompt, response, logprobs, scalars))


def _row_to_entry(row: tuple) -> CacheEntry:
    (uid, version_step, prompt, response, logprobs, _pl, _rl, prefix_len, prefix_policy_step, finished, reward,
     policy_step, created_at, _digest) = row
    return CacheEntry(uid=uid, prompt_ids=decode_ids(prompt), response_ids=decode_ids(response),
                      logprobs=decode_logprobs(logprobs), reward=reward, policy_step=policy_step,
                      created_at=created_at, prefix_len=prefix_len, prefix_policy_step=prefix_policy_step,
                      finished=bool(finished), version_step=version_step)


def _summary(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"count": 0}
    return {"count": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)), "max": float(x.max())}


def _counts(x: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(x, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def _histogram(x: np.ndarray, bins: int = 10) -> dict[str, int]:
    """Counts per value when rewards take few values (e.g. 0/1), else counts per equal-width bin."""
    if x.size == 0:
        return {}
    values, counts = np.unique(x, return_counts=True)
    if len(values) <= bins:
        return {f"{v:g}": int(c) for v, c in zip(values, counts)}
    counts, edges = np.histogram(x, bins=bins)
    return {f"[{lo:.3g}, {hi:.3g}{']' if i == bins - 1 else ')'}": int(c)
            for i, (lo, hi, c) in enumerate(zip(edges[:-1], edges[1:], counts))}

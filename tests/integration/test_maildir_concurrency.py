"""Several processes hammering one Maildir folder at once (issue 3, "Concurrency"):
deliverers (libcourier.maildir.delivery), IMAP-like sessions that scan and change flags
and keywords, an expunger and a copier. Afterwards: no message lost or duplicated, no
UID handed out twice or changed, UIDVALIDITY never changed, and no flag or keyword
change lost. Every loop is bounded; every join has a deadline."""

from __future__ import annotations

import multiprocessing as mp
import random
import traceback
from pathlib import Path

from libcourier.maildir import folders
from libcourier.maildir.delivery import deliver_to_maildir
from libcourier.maildir.folder import Maildir

DELIVERERS, PER_DELIVERER = 2, 30
SESSIONS, SESSION_ROUNDS = 3, 12
SESSION_LETTERS = "FRD"          # each session owns one flag letter and one keyword
JOIN_TIMEOUT = 300.0


def _deliverer(md: str, k: int, q) -> None:
    try:
        for i in range(PER_DELIVERER):
            deliver_to_maildir(Path(md), [f"Subject: d{k}-{i}\n\nbody {k} {i}\n".encode()])
        q.put(("ok", k, None))
    except Exception:
        q.put(("error", k, traceback.format_exc()))


def _observe(st, seen: dict) -> None:
    for m in st.messages:
        seen.setdefault(("uid", m.uid), set()).add(m.base)
        seen.setdefault(("base", m.base), set()).add(m.uid)
    seen.setdefault(("uidv",), set()).add(st.uidvalidity)


def _session(md: str, s: int, q) -> None:
    try:
        rnd = random.Random(s)
        box = Maildir(Path(md))
        letter, keyword = SESSION_LETTERS[s], f"kw{s}"
        touched: set[str] = set()
        seen: dict = {}
        for _ in range(SESSION_ROUNDS):
            st = box.scan()
            _observe(st, seen)
            picked = [m for m in st.messages if rnd.random() < 0.5]
            done = []
            for m in picked:
                try:
                    done.append(box.change_flags(m, add=letter))
                except FileNotFoundError:
                    continue        # expunged meanwhile
            if done:
                box.change_keywords(done, "+", frozenset({keyword}))
                touched.update(m.base for m in done)
        q.put(("session", s, (touched, seen)))
    except Exception:
        q.put(("error", s, traceback.format_exc()))


def _expunger(md: str, q) -> None:
    try:
        box = Maildir(Path(md))
        gone: set[str] = set()
        seen: dict = {}
        for _ in range(SESSION_ROUNDS):
            st = box.scan()
            _observe(st, seen)
            for m in st.messages[::4]:
                try:
                    m = box.change_flags(m, add="T")
                except FileNotFoundError:
                    continue
                box.remove(m)
                gone.add(m.base)
        q.put(("expunger", 0, (gone, seen)))
    except Exception:
        q.put(("error", "expunger", traceback.format_exc()))


def _copier(md: str, dst: str, q) -> None:
    try:
        box = Maildir(Path(md))
        uids: list[int] = []
        copied = 0
        for _ in range(SESSION_ROUNDS):
            st = box.scan()
            for m in st.messages[-3:]:
                try:
                    added = folders.copy_messages([(box.path_of(m), m.flags, m.size)],
                                                  Path(dst), [m.keywords])
                except FileNotFoundError:
                    continue        # expunged or renamed under us: COPY says NO
                uids.extend(added.uids)
                copied += 1
        q.put(("copier", 0, (uids, copied)))
    except Exception:
        q.put(("error", "copier", traceback.format_exc()))


def test_many_processes_one_folder(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    dst = folders.create_folder(md, "INBOX.Copies")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_deliverer, args=(str(md), k, q)) for k in range(DELIVERERS)]
    procs += [ctx.Process(target=_session, args=(str(md), s, q)) for s in range(SESSIONS)]
    procs += [ctx.Process(target=_expunger, args=(str(md), q)),
              ctx.Process(target=_copier, args=(str(md), str(dst), q))]
    for p in procs:
        p.start()
    results = [q.get(timeout=JOIN_TIMEOUT) for _ in procs]
    for p in procs:
        p.join(JOIN_TIMEOUT)
        assert p.exitcode == 0
    errors = [r for r in results if r[0] == "error"]
    assert not errors, errors[0][2]

    final = Maildir(md).scan()
    seen: dict = {}
    _observe(final, seen)
    gone: set[str] = set()
    for kind, _who, payload in results:
        if kind in ("session", "expunger"):
            obs = payload[1]
            for key, vals in obs.items():
                seen.setdefault(key, set()).update(vals)
        if kind == "expunger":
            gone = payload[0]

    # Every delivered message is there or was expunged, once.
    subjects = []
    for m in final.messages:
        with open(Maildir(md).path_of(m), "rb") as fh:
            subjects.append(fh.readline())
    assert len(subjects) == len(set(subjects))
    assert len(final.messages) + len(gone) == DELIVERERS * PER_DELIVERER
    assert not gone & {m.base for m in final.messages}
    # One UIDVALIDITY; a UID always named the same message and a message kept its UID.
    assert len(seen[("uidv",)]) == 1
    for key, vals in seen.items():
        if key[0] in ("uid", "base"):
            assert len(vals) == 1, (key, vals)
    uids = [m.uid for m in final.messages]
    assert uids == sorted(set(uids))
    # No flag or keyword change lost: each session's letter and keyword on what it touched.
    by_base = {m.base: m for m in final.messages}
    for kind, s, payload in results:
        if kind != "session":
            continue
        for base in payload[0] - gone:
            m = by_base[base]
            assert SESSION_LETTERS[s] in m.flags, (s, m)
            assert f"kw{s}" in m.keywords, (s, m)
    # Copies: every copy got its own UID, and the folder holds exactly those.
    [(copy_uids, copied)] = [r[2] for r in results if r[0] == "copier"]
    assert len(copy_uids) == copied == len(set(copy_uids))
    assert sorted(m.uid for m in Maildir(dst).scan().messages) == sorted(copy_uids)

"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 §3, §4): sans-I/O.

    thread     = ["UID" SP] "THREAD" SP thread-alg SP search-criteria
    thread-alg = "ORDEREDSUBJECT" / "REFERENCES"
    thread-data = "THREAD" [SP 1*thread-list]
    thread-list = "(" (thread-members / thread-nested) ")"

Messages come in mailbox order as `ThreadFacts`; the answer is the THREAD
response's list text with the numbers `number(m)` gives (sequence or UID).
Both algorithms follow the RFC's steps in order; each step is commented with
its number. No recursion on the depth of a thread (a reference chain of 10,000
messages is a 10,000-deep tree), so walks use explicit stacks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from courier_imapd.core import ParseError, Reader
from courier_imapd.search import Program, parse_keys

from libcourier.maildir.sortkeys import SortKeys, subject_key, thread_ids

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
_T = TypeVar("_T")


def parse_thread_args(r: Reader) -> tuple[str, Program]:
    """SP thread-alg SP charset 1*(SP search-key), after the command name."""
    r.sp()
    alg = r.atom().decode("ascii").upper()
    if alg not in ALGORITHMS:
        raise ParseError(f"unknown threading algorithm {alg[:40]}")
    r.sp()
    charset = r.astring().decode("ascii", "replace").upper()
    return alg, Program(charset, parse_keys(r, charset))


class ThreadFacts(Protocol):
    seq: int

    def sent_time(self) -> float: ...          # RFC 5256 §2.2 sent date
    def field(self, name: bytes) -> bytes | None: ...
    def memo(self, key: str, compute: Callable[[], _T]) -> _T: ...   # kept across commands
    def keys(self) -> SortKeys | None: ...     # stored in the folder index, if it has them


# -- message ids and subjects (computed as libcourier.maildir.sortkeys stores them) --------

def _ids_of(m: ThreadFacts) -> tuple[bytes | None, tuple[bytes, ...]]:
    return thread_ids(m.field(b"message-id"), m.field(b"references"), m.field(b"in-reply-to"))


def _ids(m: ThreadFacts) -> tuple[bytes | None, tuple[bytes, ...]]:
    """The message's own Message-ID and its references (References:, else the first
    msg-id of In-Reply-To: RFC 5256 §4 step 1): from the index's keys when it has them."""
    k = m.keys()
    if k is not None:
        return k.message_id, k.references
    return m.memo("thread:ids", lambda: _ids_of(m))


def _subject(m: ThreadFacts) -> tuple[bytes, bool]:
    """(base subject in i;ascii-casemap, is a reply or forward)."""
    k = m.keys()
    if k is not None:
        return k.subject, k.reply
    return m.memo("thread:subject", lambda: subject_key(m.field(b"subject")))


# -- the tree ------------------------------------------------------------------------

@dataclass(eq=False, slots=True)
class Node:
    msg: ThreadFacts | None = None          # None: a dummy
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    order: tuple[float, int] = (0.0, 0)   # (sent date, sequence): the sort key

    def is_ancestor_of(self, other: Node) -> bool:
        n: Node | None = other
        while n is not None:
            if n is self:
                return True
            n = n.parent
        return False


def _link(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def _date_key(n: Node) -> tuple[float, int]:
    if n.msg is not None:
        return n.order
    # a dummy sorts by its first child (children are sorted by then)
    return n.children[0].order if n.children else (0.0, 0)


def format_threads(roots: list[Node], number: Callable[[ThreadFacts], int]) -> str:
    """The thread-lists of a THREAD response (RFC 5256 §4):

        thread-list    = "(" (thread-members / thread-nested) ")"
        thread-members = nz-number *(SP nz-number) [SP thread-nested]
        thread-nested  = 2*thread-list

    A chain of single children is written inline, siblings as nested lists."""
    out: list[str] = []
    stack: list[Node | None] = list(reversed(roots))     # None: close a list
    while stack:
        n = stack.pop()
        if n is None:
            out.append(")")
            continue
        nums = []
        while True:
            if n.msg is not None:
                nums.append(str(number(n.msg)))
            if len(n.children) != 1:
                break
            n = n.children[0]
        out.append("(" + " ".join(nums) + (" " if nums and n.children else ""))
        stack.append(None)
        stack.extend(reversed(n.children))
    return "".join(out)


# -- ORDEREDSUBJECT (§3) ---------------------------------------------------------------

def ordered_subject(messages: list[ThreadFacts]) -> list[Node]:
    """Sort by base subject then sent date; each run of one subject is a thread whose
    first message is the parent of all the others (siblings); threads in the order
    of their first message's sent date."""
    keyed = sorted(((_subject(m)[0], m.sent_time(), m.seq, m)
                    for m in messages), key=lambda t: t[:3])
    roots: list[Node] = []
    last = None
    for subj, when, seq, m in keyed:
        node = Node(m, order=(when, seq))
        if roots and subj == last:
            _link(roots[-1], node)
        else:
            roots.append(node)
            last = subj
    roots.sort(key=_date_key)
    return roots


# -- REFERENCES (§4) -------------------------------------------------------------------

def references(messages: list[ThreadFacts]) -> list[Node]:
    table: dict[bytes, Node] = {}
    nodes: list[Node] = []
    for m in messages:
        node = Node(m, order=(m.sent_time(), m.seq))
        nodes.append(node)
        # (1)(A) the message's own Message-ID; a duplicate or missing one is a unique id
        mid, refs = _ids(m)
        if mid is not None:
            c = table.get(mid)
            if c is None:
                table[mid] = node
            elif c.msg is None:
                # a dummy made for a reference: it becomes this message
                c.msg, c.order = m, node.order
                nodes[-1] = node = c
            # else: a duplicate Message-ID; this message stays unique (not in the table)
        # (1)(B) the references: References:, else the first msg-id of In-Reply-To
        prev: Node | None = None
        for ref in refs:
            c = table.get(ref)
            if c is None:
                c = table[ref] = Node()
            # link prev -> c unless c has a parent already or this makes a loop
            if prev is not None and c.parent is None and c is not prev \
                    and not c.is_ancestor_of(prev):
                _link(prev, c)
            prev = c
        # (1)(C) the last reference is this message's parent (breaking an existing
        # link: it came from a truncated References), unless that makes a loop
        if prev is not None and prev is not node and not node.is_ancestor_of(prev):
            _unlink(node)
            _link(prev, node)
        elif prev is None:
            _unlink(node)
    # (2) the root set: every container without a parent
    seen: set[int] = set()
    roots: list[Node] = []
    for n in [*nodes, *table.values()]:
        if id(n) not in seen:
            seen.add(id(n))
            if n.parent is None:
                roots.append(n)
    # (3) prune dummies (the id table is no longer needed)
    table.clear()
    roots = _prune(roots)
    # (4) sort the root set by sent date (a dummy by its first child's, sorted first)
    for r in roots:
        if r.msg is None:
            r.children.sort(key=_date_key)
    roots.sort(key=_date_key)
    # (5) group by base subject
    roots = _group_by_subject(roots)
    # (6) sort every set of siblings by sent date, the deepest first
    _sort_all(roots)
    roots.sort(key=_date_key)
    return roots


def _prune(roots: list[Node]) -> list[Node]:
    """Step (3): a dummy without children goes; a dummy with children goes and its
    children take its place, but not into the root set unless there is just one."""

    def prune_children(parent: Node) -> None:
        out: list[Node] = []
        for c in parent.children:
            if c.msg is None:
                if not c.children:
                    continue
                for g in c.children:
                    g.parent = parent
                out.extend(c.children)
            else:
                out.append(c)
        parent.children = out

    # bottom-up without recursion: collect nodes in pre-order, prune in reverse
    order: list[Node] = []
    stack = list(roots)
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
    for n in reversed(order):
        prune_children(n)
    out: list[Node] = []
    for r in roots:
        if r.msg is None:
            if not r.children:
                continue
            if len(r.children) == 1:
                child = r.children[0]
                child.parent = None
                out.append(child)
                continue
        out.append(r)
    return out


def _thread_subject(n: Node) -> tuple[bytes, bool]:
    m = n.msg if n.msg is not None else (n.children[0].msg if n.children else None)
    if m is None:
        return b"", False
    return _subject(m)


def _group_by_subject(roots: list[Node]) -> list[Node]:
    """Step (5): threads whose roots share a base subject are merged."""
    subjects = {id(r): _thread_subject(r) for r in roots}
    # (A)-(B) the subject table: one container per base subject
    table: dict[bytes, Node] = {}
    for r in roots:
        subj, _ = subjects[id(r)]
        if not subj:
            continue
        old = table.get(subj)
        if old is None:
            table[subj] = r
        elif old.msg is not None and (r.msg is None or (
                _is_reply(old, subjects) and not _is_reply(r, subjects))):
            table[subj] = r
    # (C) merge each root with the table's container for its subject
    dummies: list[Node] = []
    for r in roots:
        subj, _ = subjects[id(r)]
        if not subj or r.parent is not None:      # (a root already merged into another)
            continue
        old = table[subj]
        if old is r:
            continue
        if old.msg is None and r.msg is None:
            for c in r.children:
                c.parent = old
            old.children.extend(r.children)
            r.children = []
        elif old.msg is None:
            _link(old, r)
        elif _is_reply(r, subjects) and not _is_reply(old, subjects):
            _link(old, r)
        else:
            dummy = Node()
            _link(dummy, old)
            _link(dummy, r)
            table[subj] = dummy
            subjects[id(dummy)] = subjects[id(old)]
            dummies.append(dummy)
    return [r for r in [*roots, *dummies]
            if r.parent is None and (r.msg is not None or r.children)]


def _is_reply(n: Node, subjects: dict[int, tuple[bytes, bool]]) -> bool:
    return subjects[id(n)][1]


def _sort_all(roots: list[Node]) -> None:
    order: list[Node] = []
    stack = list(roots)
    while stack:
        n = stack.pop()
        order.append(n)
        stack.extend(n.children)
    for n in reversed(order):          # children before their parents
        if len(n.children) > 1:
            n.children.sort(key=_date_key)


def thread(algorithm: str, messages: list[ThreadFacts]) -> list[Node]:
    return ordered_subject(messages) if algorithm == "ORDEREDSUBJECT" else references(messages)

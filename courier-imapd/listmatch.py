"""LIST / LSUB mailbox patterns (RFC 3501 §6.3.8): "*" matches anything, "%" anything
but the hierarchy delimiter ".".

Matched with bit sets over the name's positions, one step per pattern token, so the
work is O(len(pattern)) big-integer operations per name and stops when nothing is
reachable. A regular expression with one ".*" per wildcard backtracked for minutes on
a pattern like "%*%*%*...x" (one LIST line of a client froze its session).
"""

from __future__ import annotations


class ListPattern:
    __slots__ = ("tokens", "inbox")

    def __init__(self, pattern: str):
        # INBOX is case-insensitive (§5.1): a pattern starting with it matches any case.
        self.inbox = pattern[:5].upper() == "INBOX"
        if self.inbox:
            pattern = "INBOX" + pattern[5:]
        tokens: list[str] = []
        for c in pattern:
            if c in "*%" and tokens and tokens[-1] in ("*", "%"):
                if c == "*":        # a run of wildcards is "*" if it holds one, else "%"
                    tokens[-1] = "*"
                continue
            tokens.append(c)
        self.tokens = tuple(tokens)

    def fullmatch(self, name: str) -> bool:
        if self.inbox:
            if name[:5].upper() != "INBOX":
                return False
            name = "INBOX" + name[5:]
        n = len(name)
        every = (1 << (n + 1)) - 1
        at: dict[str, int] = {}     # char -> bits i+1 where name[i] is that char
        steps = 0                   # bits i+1 where name[i] is not the delimiter
        for i, ch in enumerate(name):
            bit = 1 << (i + 1)
            at[ch] = at.get(ch, 0) | bit
            if ch != ".":
                steps |= bit
        reach = 1                   # bit i: the pattern so far can end at position i
        for t in self.tokens:
            if t == "*":
                reach = every & ~((reach & -reach) - 1)      # the lowest and all above
            elif t == "%":
                # Fill each run of non-delimiter steps from its first reached bit up:
                # adding y to the run carries through it (the usual bit-parallel trick).
                y = (reach << 1) & steps
                reach |= (((steps + y) ^ steps) & steps) | y
            else:
                reach = (reach << 1) & at.get(t, 0)
            if not reach:
                return False
        return bool(reach >> n & 1)

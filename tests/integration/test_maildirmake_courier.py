"""Our maildirmake against Courier's own (Debian courier-base's /usr/bin/maildirmake.courier,
skipped where it is not installed): the same commands make the same trees (names, modes,
file contents) for -S, -s read/write[,group] -f, plain maildirs and folders, --add; and the
same exit codes and words for what both refuse."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from maildirmake_pair import needs_courier, ours, theirs, tree

SCRIPT = [
    ["-S", "{t}/Sh"],
    ["-s", "write", "-f", "Weekly", "{t}/Sh"],
    ["-sread,group", "-fBoard", "{t}/Sh"],
    ["-s", "write,group", "-f", "Team", "{t}/Sh"],
    ["-s", "read", "-f", "Notes", "{t}/Sh"],
    ["{t}/Md"],
    ["-f", "Sent.2024", "{t}/Md"],
    ["-q", "100S", "-f", "Work", "{t}/Md"],         # Courier: DIR/.Work, its own maildirsize
    ["-q", "200S,5C", "-f", "Work", "{t}/Md"],
    ["-q", "300S", "-f", "Sent.2024", "{t}/Md"],
    ["--add", "notices={t}/Sh", "{t}/Md"],
    ["--add", "other={t}/Sh", "{t}/Md"],
    ["--del", "other", "{t}/Md"],
    # Refused by both, with the same exit code and words:
    ["--add", "notices={t}/Sh", "{t}/Md"],         # 2: already defined
    ["--add", "bad.nick={t}/Sh", "{t}/Md"],        # 1: invalid name
    ["--add", "rel=relative/path", "{t}/Md"],      # 1: usage
    ["--del", "none", "{t}/Md"],                   # 1: not found
    ["-s", "read", "{t}/Sh"],                      # 1: -s needs -f
    ["{t}/Md"],                                    # 1: exists
]


@needs_courier
def test_same_trees_and_answers(tmp_path: Path) -> None:
    results = {}
    for who, run in (("courier", theirs), ("ours", ours)):
        top = tmp_path / who
        top.mkdir()
        os.chmod(top, 0o755)
        answers = []
        for step in SCRIPT:
            r = run(*[a.format(t=top) for a in step])
            words = (r.stdout + r.stderr).replace(str(top), "TOP")
            answers.append((r.returncode, words.removeprefix("maildirmake: ").strip()
                            if r.returncode else ""))
        results[who] = (tree(top, mask_top=True), answers)
    c_tree, c_answers = results["courier"]
    o_tree, o_answers = results["ours"]
    assert o_tree == c_tree
    # Exit codes equal; the words equal where Courier says something of its own (the
    # "File exists" one is perror's, ours names the maildir the same way).
    assert [a[0] for a in o_answers] == [a[0] for a in c_answers]
    for (_, mine), (_, its) in zip(o_answers, c_answers, strict=True):
        if "already defined" in its or "invalid name" in its or "not found" in its \
                or its.startswith("Usage"):
            assert mine == its


@needs_courier
def test_courier_reads_our_shared_maildirs_lines(tmp_path: Path) -> None:
    """A shared-maildirs file we wrote is one Courier's --add/--del work on, and back."""
    md = tmp_path / "Md"
    assert ours(str(md)).returncode == 0
    assert ours("--add", f"a={tmp_path}", str(md)).returncode == 0
    assert theirs("--add", f"a={tmp_path}", str(md)).returncode == 2      # sees ours
    assert theirs("--add", f"b={tmp_path}", str(md)).returncode == 0
    assert ours("--add", f"b={tmp_path}", str(md)).returncode == 2        # sees Courier's
    assert theirs("--del", "a", str(md)).returncode == 0
    assert ours("--del", "b", str(md)).returncode == 0
    assert (md / "shared-maildirs").read_text() == ""
    shutil.rmtree(md)

"""Print the task a failed molecule or ansible-playbook run stopped at.

usage: scripts/failed_task.py LOG

CI shows only the end of a run's output, where molecule prints its recap but not
which task failed or why. This prints the last failures that were not ignored
(rescued ones cannot be told apart here, and with several platforms a host that
rescues may print after the one that failed): each task's name and its message,
joined back into one line (molecule wraps and colours what Ansible prints).
Prints nothing when the log holds no failure.
"""
import re
import sys

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BOX = re.compile(r"^\s*│ ?")  # molecule's frame around the playbook's output
_FAILURE = re.compile(r"^(fatal|failed): \[")
_LIMIT = 2000
_SHOWN = 4


def clean(raw):
    return _BOX.sub("", _ANSI.sub("", raw.rstrip("\n")))


def failures(lines):
    """[(task header, failure text)] of the failures not followed by '...ignoring', in log order."""
    task, found = None, []
    for i, line in enumerate(lines):
        if line.startswith("TASK ["):
            # Long task names wrap onto the next line, which ends with stars.
            header = line
            if not line.rstrip().endswith("*") and i + 1 < len(lines):
                header += " " + lines[i + 1].strip()
            task = header.rstrip(" *")
        elif _FAILURE.match(line):
            block = [line.strip()]
            for following in lines[i + 1:]:
                if not following.strip() or following.startswith(("TASK [", "PLAY", "RUNNING HANDLER")):
                    break
                block.append(following.strip())
            text = " ".join(block)
            ignored = any(candidate.strip() == "...ignoring" for candidate in lines[i + 1:i + 1 + len(block) + 2])
            if not ignored:
                found.append((task, text))
    return found


def main(argv):
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    with open(argv[1], encoding="utf-8", errors="replace") as handle:
        lines = [clean(raw) for raw in handle]
    found = failures(lines)[-_SHOWN:]
    if found:
        print("=== the last %d failures in the log (rescued ones included) ===" % len(found))
    for task, text in found:
        print(task or "(no task header)")
        print(text if len(text) <= _LIMIT else text[:_LIMIT] + " ...")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""What a run that did not finish left behind: missing Scores, and the job log that says why.

A ``--keep-going`` run on a study where one subject's data are bad finishes every other subject;
its summary then lists the Scores that exist and names each missing one with the first log of
its chain of jobs (features, ceiling, encode) that recorded an error, and that error's line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["SCORES_PATTERN", "first_error", "missing_lines"]

#: ``results/sub-{subject}/{dataset}/{model}/{encoder}/scores.nc``, as the workflow names Scores.
SCORES_PATTERN = re.compile(
    r"(?:^|/)sub-(?P<subject>[^/]+)/(?P<dataset>[^/]+)/(?P<model>[^/]+)/(?P<encoder>[^/]+)/"
    r"scores\.nc$"
)

# our CLI ends a failed job's log with "alignment <verb>: error: <message>"; anything else ends
# with a Python traceback whose last line is "SomeError: message"
_CLI_ERROR = re.compile(r"^alignment [\w-]+: error: ")
_TRACEBACK_END = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*")


def first_error(log: str | os.PathLike) -> str | None:
    """The line of a job log that says why the job failed, or None when it records no error.

    Parameters
    ----------
    log : path-like
        A job's log file (stdout and stderr of one ``alignment <verb>`` call).

    Returns
    -------
    str or None
        The CLI's one-line error when present, else the last line of a Python traceback,
        else None (also when the log does not exist).
    """
    path = Path(log)
    if not path.is_file():
        return None
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if _CLI_ERROR.match(line):
            return line
    if any(ln.startswith("Traceback (most recent call last)") for ln in lines):
        for line in reversed(lines):
            if _TRACEBACK_END.match(line):
                return line
    return None


def missing_lines(missing: dict[str, list[str]]) -> list[str]:
    """One line per missing Scores file, naming the job log that explains it.

    Parameters
    ----------
    missing : dict of str to list of str
        Path of each missing Scores file to the logs of the jobs it depends on, upstream first
        (features, ceiling, encode).

    Returns
    -------
    list of str
        ``sub-02 | my-study | vit | ridge: FAILED, see <log>: <error line>``, or ``not produced``
        when no log records an error (an upstream job did not run).
    """
    lines = []
    for scores, logs in missing.items():
        match = SCORES_PATTERN.search(str(scores).replace(os.sep, "/"))
        head = (
            " | ".join(
                [f"sub-{match['subject']}", match["dataset"], match["model"], match["encoder"]]
            )
            if match
            else str(scores)
        )
        for log in logs:
            error = first_error(log)
            if error:
                lines.append(f"{head}: FAILED, see {log}: {error}")
                break
        else:
            lines.append(f"{head}: not produced ({scores} is missing; no job log records an error)")
    return lines

"""One short message instead of a traceback for every error a person can act on.

:func:`run_command` wraps the ``lrag`` entry point. An exception that reaches it is traced back
through its causes (jsonargparse wraps a constructor's ``ValueError`` in two layers of its own,
Lightning re-raises from its hooks) to the innermost one that explains itself: an lrag error, a
value/file/permission error or a YAML error. Its text, which names the file or key and the fix,
becomes the message; the process exits with status 1 (130 on Ctrl-C). Anything else still gets
one line plus how to see the traceback. ``--debug`` anywhere on the command line, or
``LRAG_DEBUG=1``, lets every exception through with its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["DEBUG_ENV", "explain", "run_command"]

DEBUG_ENV = "LRAG_DEBUG"

#: Built-in exception types whose message is about the user's input, not a bug.
_USER_TYPES: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
    PermissionError, FloatingPointError,
)
_DEBUG_HINT = f"run with --debug (or {DEBUG_ENV}=1) for the traceback"


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes/contexts, outermost first (cycles cut)."""
    seen: list[BaseException] = []
    while err is not None and all(err is not s for s in seen):
        seen.append(err)
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return seen


def _is_user_error(err: BaseException) -> bool:
    module = type(err).__module__ or ""
    if module == "lrag" or module.startswith("lrag."):
        return True
    if module.startswith(("yaml", "jsonargparse")):
        return True
    return isinstance(err, _USER_TYPES)


def _text(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror}: {err.filename}"  # "[Errno 13]" says nothing to a person
    return str(err).strip() or type(err).__name__


def explain(err: BaseException, command: str) -> str:
    """The one-paragraph message for ``err`` raised by ``lrag <command>``."""
    chain = _chain(err)
    known = [e for e in chain if _is_user_error(e)]
    if known:
        innermost = known[-1]
        text = _text(innermost)
        if isinstance(innermost, PermissionError) and "permission" not in text.lower():
            text = f"permission denied: {text}"
        return f"lrag {command}: {text}"
    root = chain[-1]
    return f"lrag {command}: {type(root).__name__}: {_text(root)} ({_DEBUG_HINT})"


def run_command(main: Callable[[Sequence[str] | None], None], args: Sequence[str] | None) -> None:
    """Call ``main(args)`` and turn exceptions into one-line exits (see the module docstring).

    Args:
        main: The entry point (``lrag.cli`` 's command dispatcher).
        args: Command line without the program name; ``None`` reads ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        if args is None:
            sys.argv = [sys.argv[0], *argv]
    command = argv[0] if argv else "lrag"
    try:
        main(None if args is None else argv)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"lrag {command}: interrupted; finished blocks and store rows are kept "
              "(continue a run with --resume RUN_ID).", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:  # noqa: BLE001 - the whole point: no traceback for the user
        if debug:
            raise
        raise SystemExit(explain(err, command)) from None

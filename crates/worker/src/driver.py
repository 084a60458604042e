"""Cove's scorer process: hosts one scoring script for one worker slot.

The worker starts this file with the deployment's interpreter. It imports the scoring script from the
code folder, calls init() once, then serves run(mini_batch) requests that arrive as JSON lines on stdin,
answering each on the process's original stdout. The script's own prints go to its stdout log instead,
so nothing it writes can be mistaken for an answer.
"""
import argparse
import importlib.util
import json
import logging
import os
import sys
import traceback


def main():
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--cove-code-dir", required=True)
    parser.add_argument("--cove-script", required=True)
    parser.add_argument("--cove-stdout-log", required=True)
    parser.add_argument("--cove-egress", action="append", default=[])
    args, script_argv = parser.parse_known_args()

    answers = os.fdopen(os.dup(1), "w", buffering=1)
    log_fd = os.open(args.cove_stdout_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.close(log_fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)

    observed = []
    allowed = set()
    for spec in args.cove_egress:
        name, host, port, sock = spec.split(",", 3)
        open_egress(host, int(port), sock)
        allowed.add((host, int(port)))

    def audit(event, args):
        # The sandbox has no network, so every attempt fails; recording them makes the refusal visible.
        # Allowed egress targets and the forwarders' own local sockets are not refusals.
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            address = args[1] if len(args) > 1 else None
            if isinstance(address, tuple) and tuple(address[:2]) not in allowed:
                observed.append(f"{event} {address!r}"[:200])
        elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
            observed.append(f"{event} {args[0]!r}"[:200])

    sys.addaudithook(audit)

    def answer(**message):
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    script_path = os.path.join(args.cove_code_dir, args.cove_script)
    sys.argv = [script_path] + script_argv
    sys.path.insert(0, args.cove_code_dir)
    level = "INFO"
    if "--logging_level" in script_argv:
        i = script_argv.index("--logging_level")
        if i + 1 < len(script_argv):
            level = script_argv[i + 1].upper()
    logging.basicConfig(stream=sys.stdout, level=getattr(logging, level, logging.INFO))

    try:
        spec = importlib.util.spec_from_file_location(
            os.path.splitext(os.path.basename(args.cove_script))[0], script_path
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        if hasattr(module, "init"):
            module.init()
        if not hasattr(module, "run"):
            raise AttributeError(f"{args.cove_script} defines no run(mini_batch)")
    except BaseException:
        answer(type="init_failed", error=traceback.format_exc())
        return 3
    answer(type="ready", pid=os.getpid())

    for line in sys.stdin:
        request = json.loads(line)
        if request.get("type") != "run":
            continue
        del observed[:]
        try:
            result = module.run(request["files"])
            items = write_result(result, request.get("output"))
            # A script that scores file by file may say how many files failed (Cove's MLflow driver does).
            failed = getattr(module, "cove_failed_items", None)
        except BaseException:
            answer(type="error", error=traceback.format_exc(), observed=observed[:50])
            continue
        failed = failed if isinstance(failed, int) and 0 <= failed <= len(request["files"]) else None
        answer(type="done", items=items, failed=failed, observed=observed[:50])
    return 0


def write_result(result, path):
    """Writes run()'s result as the reference's append_row does; returns how many items it holds."""
    if result is None:
        raise TypeError("run() returned None; it must return a list or a pandas DataFrame")
    is_frame = hasattr(result, "to_csv") and hasattr(result, "columns")
    if not is_frame and not isinstance(result, (list, tuple)):
        raise TypeError(f"run() returned {type(result).__name__}; it must return a list or a pandas DataFrame")
    if path is not None:
        with open(path, "w", encoding="utf-8", newline="") as out:
            if is_frame:
                # One line per row, values separated by spaces, no header and no index.
                result.to_csv(out, sep=" ", header=False, index=False, lineterminator="\n")
            elif result:
                # One write: a write call per element cost more than building the lines.
                out.write("\n".join(map(str, result)))
                out.write("\n")
    return len(result)


if __name__ == "__main__":
    sys.exit(main())

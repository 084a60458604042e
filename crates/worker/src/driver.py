"""Cove's scorer host: starts the scorer processes of one worker for one job, and hosts the scoring script.

The worker starts this file once per job with the deployment's interpreter, in the job's sandbox, with its
control socket as stdin. The host imports the libraries the scoring script imports (only those from
outside the code folder: the user's own modules run in each scorer, as they would without a host), then
forks a scorer process for each worker slot on request. Each scorer imports the scoring script, calls
init() once, then serves run(mini_batch) requests that arrive as JSON lines on its own socket, answering
each on the same socket. The script's prints go to its stdout log instead, so nothing it writes can be
mistaken for an answer.

Why a host that forks: every scorer importing numpy, pyarrow or onnxruntime itself costs each of them
the same start-up, all at once on the same cores; imported once and forked, they share it.
"""
import array
import ast
import importlib.util
import json
import logging
import os
import selectors
import signal
import socket
import sys
import traceback
import warnings


class Args:
    """The host's own arguments; every other argument is the scoring script's."""

    def __init__(self, argv):
        self.cove_code_dir = self.cove_script = None
        self.cove_egress = []
        self.script_argv = []
        # Parsed by hand: argparse costs more to import than everything else the host starts with.
        i = 0
        while i < len(argv):
            name = argv[i]
            if name in ("--cove-code-dir", "--cove-script", "--cove-egress") and i + 1 < len(argv):
                value = argv[i + 1]
                if name == "--cove-egress":
                    self.cove_egress.append(value)
                else:
                    setattr(self, name[2:].replace("-", "_"), value)
                i += 2
            else:
                self.script_argv.append(name)
                i += 1
        if self.cove_code_dir is None or self.cove_script is None:
            raise SystemExit("usage: driver.py --cove-code-dir DIR --cove-script FILE [--cove-egress SPEC]... [ARG]...")


def main():
    args = Args(sys.argv[1:])

    allowed = set()
    for spec in args.cove_egress:
        name, host, port, sock = spec.split(",", 3)
        open_egress(host, int(port), sock)
        allowed.add((host, int(port)))
    sys.path.insert(0, args.cove_code_dir)
    if os.environ.get("COVE_SCORER_PRELOAD", "1") != "0":
        preload(args.cove_code_dir, args.cove_script)
    return serve(args, allowed)


def preload(code_dir, script):
    """Imports the modules the script imports at its top level that live outside the code folder.

    A module that fails to import here is left alone: the scorer importing the script meets the same
    error, and reports it as its own.
    """
    try:
        with open(os.path.join(code_dir, script), "rb") as f:
            tree = ast.parse(f.read())
    except BaseException:
        return
    names = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    code_dir = os.path.realpath(code_dir)
    for name in names:
        try:
            spec = importlib.util.find_spec(name.split(".")[0])
            origin = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), None))
            if not origin or os.path.realpath(origin).startswith(code_dir + os.sep):
                continue
            importlib.import_module(name)
        except BaseException:
            pass


def serve(args, allowed):
    """Serves the worker's control socket: forks scorers, kills them, and reports how each ended."""
    control = socket.socket(fileno=0)
    control.setblocking(True)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    scorers = {}  # pid -> the worker's number for that scorer

    def tell(**message):
        control.send(json.dumps(message).encode() + b"\n")

    while True:
        for key, _ in selector.select():
            if key.fileobj is wake_r:
                try:
                    while wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
                reap(scorers, tell)
                continue
            message, fds = receive(control)
            if not message:
                # The worker is gone: so are its scorers.
                for pid in scorers:
                    kill_group(pid)
                return 0
            request = json.loads(message)
            if "fork" in request:
                if len(fds) != 2:
                    for fd in fds:
                        os.close(fd)
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                with warnings.catch_warnings():
                    # Python warns of forking a process with threads; the libraries imported above expect it.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
                if pid == 0:
                    selector.close()
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for s in (control, wake_r, wake_w):
                        s.close()
                    code = 1
                    try:
                        code = scorer(args, allowed, request, fds[0], fds[1])
                    except BaseException:
                        traceback.print_exc()
                    finally:
                        for stream in (sys.stdout, sys.stderr):
                            try:
                                stream.flush()
                            except BaseException:
                                pass
                        os._exit(code)
                for fd in fds:
                    os.close(fd)
                try:
                    os.setpgid(pid, pid)
                except OSError:
                    pass
                scorers[pid] = request["fork"]
            elif "kill" in request:
                for pid, number in scorers.items():
                    if number == request["kill"]:
                        kill_group(pid)


def receive(control):
    """One request and the descriptors sent with it (socket.recv_fds, which Python 3.8 lacks)."""
    fds = array.array("i")
    message, ancillary, _, _ = control.recvmsg(65536, socket.CMSG_LEN(2 * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return message, list(fds)


def reap(scorers, tell):
    while scorers:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        number = scorers.pop(pid, None)
        if number is None:
            continue
        # What a scorer started may outlive it in its group: it ends with it.
        kill_group(pid)
        if os.WIFSIGNALED(status):
            tell(exited=number, signal=os.WTERMSIG(status))
        else:
            tell(exited=number, code=os.WEXITSTATUS(status))


def kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def scorer(args, allowed, request, channel_fd, stderr_fd):
    script_argv = args.script_argv
    """One scorer process: the script's init(), then run() for each request on its channel."""
    os.setpgid(0, 0)
    os.dup2(stderr_fd, 2)
    os.close(stderr_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    log_fd = os.open(request["stdout_log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.close(log_fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.environ["AZUREML_BI_OUTPUT_PATH"] = request["output_dir"]
    if request.get("home"):
        os.environ["HOME"] = request["home"]
        os.chdir(request["home"])
    channel = socket.socket(fileno=channel_fd)
    requests = channel.makefile("r", encoding="utf-8")
    answers = channel.makefile("w", encoding="utf-8", buffering=1)

    observed = []

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

    for line in requests:
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
                # One write: a write call per element cost more than building the lines. Lines that
                # are strings already (most scripts return them) are joined without a str() call each,
                # which cost seven times the join itself.
                try:
                    text = "\n".join(result)
                except TypeError:
                    text = "\n".join(map(str, result))
                out.write(text)
                out.write("\n")
    return len(result)


if __name__ == "__main__":
    sys.exit(main())

"""Running main.py in subprocesses: one process, N processes under torchrun, or N ranks started by
hand, each with its own arguments (its own --workdir: nodes that share no filesystem)."""
import os
import socket
import subprocess
import sys
from typing import List, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int) -> List[str]:
    """The command that starts main.py: plain python for one process, torch.distributed.run for more."""
    if nproc == 1:
        return [sys.executable, MAIN]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", MAIN]


def run_main(args: Sequence[str], nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """main.py with `args` on `nproc` processes; asserts that it succeeded."""
    proc = subprocess.run([*torchrun(nproc), *args], capture_output=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc


def run_ranks(args_per_rank: Sequence[Sequence[str]], timeout: float = 300) -> List[subprocess.CompletedProcess]:
    """main.py once per rank, rank r with args_per_rank[r], joined into one process group through the
    environment torchrun would set (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK); asserts that
    every rank succeeded. Returns their (returncode, stdout, stderr) as CompletedProcess objects."""
    world, port = len(args_per_rank), free_port()
    procs = []
    try:
        for r, args in enumerate(args_per_rank):
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(r), LOCAL_RANK=str(r),
                       WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
            procs.append(subprocess.Popen([sys.executable, MAIN, *args], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, cwd=ROOT, env=env))
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    done = [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outs)]
    for r, proc in enumerate(done):
        assert proc.returncode == 0, f"rank {r}: " + proc.stderr.decode()[-3000:]
    return done

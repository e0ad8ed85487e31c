"""Service speed: ``soilcarbon serve`` against ``mlflow models serve --env-manager local`` of the same
registered model, both started here on 127.0.0.1 and called by a local httpx client.

- Model: the benchmark calibration of ``bench_predict.py`` (default preprocessing + PLS 10, conformal
  intervals, PCA domain check), registered in a temporary MLflow SQLite store; ``--model URI``
  uses another registered model (``MLFLOW_TRACKING_URI``).
- Payloads: real NIR spectra of ../shared/data/nirsoil (700 points). Ours: ``POST /v1/predict`` with
  ``{"axis", "unit", "samples"}``; MLflow: ``POST /invocations`` with ``dataframe_split`` (the model's
  columns) and ``params.level``. Both answers are checked to agree before timing.
- Latency: ``--requests`` sequential requests of one spectrum and ``--batches`` of 100 spectra per
  server, the two servers alternating request by request; p50 and p99 in milliseconds.
- Throughput: ``--clients`` threads sending single-spectrum requests, ``--load-requests`` in total
  per server; requests/s. Each server runs one process (uvicorn) on the same machine as the client.
- All loops are bounded; servers are stopped at the end (and on any error).

    .venv/bin/python benchmarks/bench_service.py [--requests 200] [--batches 40] [--clients 8] [--load-requests 400]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NIRSOIL = REPO.parent / "shared" / "data" / "nirsoil" / "nirsoil_train.csv"
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], url: str, health: str, env: dict, timeout: float = 180) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen(command, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + health, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    process.terminate()
    raise RuntimeError(f"{command[:3]} did not answer on {url}{health} within {timeout} s")


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def payloads(table, columns, ids):
    """(ours, mlflow) JSON bodies for the given rows."""
    values = table.loc[ids, columns].to_numpy()
    ours = {"axis": [float(c) for c in columns], "unit": "nm",
            "samples": [{"id": i, "values": row.tolist()} for i, row in zip(ids, values)]}
    theirs = {"dataframe_split": {"columns": ["sample_id"] + columns,
                                  "data": [[i] + row.tolist() for i, row in zip(ids, values)]},
              "params": {"level": 0.9}}
    return json.dumps(ours).encode(), json.dumps(theirs).encode()


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential single-spectrum requests per server")
    parser.add_argument("--batches", type=int, default=40, help="sequential 100-spectrum requests per server")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads for the load test")
    parser.add_argument("--load-requests", type=int, default=400, help="requests per server in the load test")
    parser.add_argument("--model", default=None, help="a registered model URI instead of training one")
    args = parser.parse_args()

    import httpx
    import pandas as pd

    from bench_predict import train_and_register

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        uri = args.model or train_and_register(Path(tmp))
        env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"),
                   PYTHONPATH=str(REPO))
        # mlflow models serve runs `uvicorn` from PATH: the one of this environment
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        ours_port, theirs_port = free_port(), free_port()
        ours_url, theirs_url = f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{theirs_port}"
        ours = theirs = None
        try:
            started = time.perf_counter()
            ours = start([sys.executable, "-m", "soilcarbon", "serve", "--model", uri, "--port", str(ours_port)],
                         ours_url, "/healthz", env)
            ours_start = time.perf_counter() - started
            mlflow_cli = str(Path(sys.executable).with_name("mlflow"))
            started = time.perf_counter()
            theirs = start([mlflow_cli, "models", "serve", "-m", uri, "--env-manager", "local", "--host", "127.0.0.1",
                            "-p", str(theirs_port), "--workers", "1"], theirs_url, "/ping", env)
            theirs_start = time.perf_counter() - started

            table = pd.read_csv(NIRSOIL).set_index("sample_id", drop=False)
            columns = [c for c in table.columns if c[0].isdigit()]
            rng = np.random.default_rng(0)
            ids = table.index.to_numpy()
            client = httpx.Client(timeout=120, headers={"content-type": "application/json"})

            def call(kind, body):
                url = ours_url + "/v1/predict" if kind == "ours" else theirs_url + "/invocations"
                response = client.post(url, content=body)
                response.raise_for_status()
                return response

            # the two servers agree
            body_ours, body_theirs = payloads(table, columns, list(ids[:100]))
            a = pd.DataFrame(call("ours", body_ours).json()["predictions"])
            b = pd.DataFrame(call("theirs", body_theirs).json()["predictions"])
            np.testing.assert_allclose(a["prediction"], b["prediction"], rtol=1e-9)
            np.testing.assert_allclose(a["upper"], b["upper"], rtol=1e-9)

            latency = {}
            for label, count, size in (("1 spectrum", args.requests, 1), ("100 spectra", args.batches, 100)):
                times = {"ours": [], "theirs": []}
                for _ in range(count):
                    chosen = list(rng.choice(ids, size, replace=False))
                    bodies = dict(zip(("ours", "theirs"), payloads(table, columns, chosen)))
                    for kind in ("ours", "theirs"):
                        t0 = time.perf_counter()
                        call(kind, bodies[kind])
                        times[kind].append(time.perf_counter() - t0)
                latency[label] = times

            single = [payloads(table, columns, [i]) for i in rng.choice(ids, 50)]
            throughput = {}
            for kind in ("ours", "theirs"):
                position = 0 if kind == "ours" else 1
                with httpx.Client(timeout=120, headers={"content-type": "application/json"},
                                  limits=httpx.Limits(max_connections=args.clients)) as pool_client:
                    url = ours_url + "/v1/predict" if kind == "ours" else theirs_url + "/invocations"

                    def one(k):
                        response = pool_client.post(url, content=single[k % len(single)][position])
                        response.raise_for_status()

                    with ThreadPoolExecutor(args.clients) as pool:
                        list(pool.map(one, range(args.clients * 2)))  # warm the connections
                        t0 = time.perf_counter()
                        list(pool.map(one, range(args.load_requests)))
                        throughput[kind] = args.load_requests / (time.perf_counter() - t0)
            client.close()
        finally:
            stop(ours)
            stop(theirs)

    print(f"\nService speed, model {uri}, one uvicorn process each, client on the same {os.cpu_count()}-CPU machine")
    print(f"startup until healthy: soilcarbon serve {ours_start:.1f} s, mlflow models serve {theirs_start:.1f} s\n")
    print(f"| {'measure':<34} | {'soilcarbon':>10} | {'mlflow':>10} | {'ratio':>6} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 8}|")
    for label, times in latency.items():
        for q in (50, 99):
            ours_ms, theirs_ms = percentile_ms(times["ours"], q), percentile_ms(times["theirs"], q)
            print(f"| {f'p{q} latency, {label} (ms)':<34} | {ours_ms:10.1f} | {theirs_ms:10.1f} | "
                  f"{ours_ms / theirs_ms:6.2f} |")
    print(f"| {f'requests/s, {args.clients} clients, 1 spectrum':<34} | {throughput['ours']:10.1f} | "
          f"{throughput['theirs']:10.1f} | {throughput['ours'] / throughput['theirs']:6.2f} |")
    print(f"\nlatency: {args.requests} + {args.batches} requests per server, alternating; load: {args.load_requests} "
          f"requests per server. Ratio = soilcarbon / mlflow (below 1 is faster for latency, above 1 for requests/s).")
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

"""The baselines of the serving benchmark: what the network stack alone costs.

    python benchmarks/bare.py http --port 18100     # FastAPI on uvicorn, POST /act returns a constant
    python benchmarks/bare.py grpc --port 18101     # grpcio, /reverie.v1.Agent/Act and ActStream echo bytes

Both use the same server settings as `reverie serve` (uvicorn's defaults with access log off;
a 16-thread grpcio server), so the difference to Reverie is the agent's own work.
"""

from __future__ import annotations

import argparse
from concurrent import futures

CONSTANT = {"action": 1, "value": 0.5, "model_version": 1, "probs": [0.5, 0.5]}


def http(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/act")
    async def act():
        return CONSTANT

    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning", lifespan="off")


def grpc_echo(port: int) -> None:
    import grpc

    def unary(request: bytes, context) -> bytes:
        return request

    def stream(requests, context):
        yield from requests

    handler = grpc.method_handlers_generic_handler("reverie.v1.Agent", {
        "Act": grpc.unary_unary_rpc_method_handler(unary),
        "ActStream": grpc.stream_stream_rpc_method_handler(stream),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("http", "grpc"))
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    http(args.port) if args.kind == "http" else grpc_echo(args.port)

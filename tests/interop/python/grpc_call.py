#!/usr/bin/python3
"""One gRPC call with Debian's python3-grpcio, over mTLS, with raw protobuf bytes.

Nothing is generated: the test serializes the request (hex on the command line) and decodes the responses, printed
one JSON object per line: {"message": "<hex>"} for each response, then {"code": "<status name>", "details": "..."}.
A stream call is cancelled after --max-messages responses (the status is then CANCELLED).
"""

import argparse
import json
import sys

import grpc


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def read(path):
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--method", required=True, help="/package.Service/Method")
    parser.add_argument("--kind", choices=["unary", "stream"], required=True)
    parser.add_argument("--request-hex", default="")
    parser.add_argument("--max-messages", type=int, default=0, help="stream: cancel after this many (0: read to the end)")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline, seconds")
    args = parser.parse_args()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.ca), private_key=read(args.key), certificate_chain=read(args.cert)
    )
    request = bytes.fromhex(args.request_hex)
    with grpc.secure_channel(args.target, credentials) as channel:
        try:
            if args.kind == "unary":
                # No serializers: grpc sends and returns the bytes as they are.
                call = channel.unary_unary(args.method)
                response = call(request, timeout=args.timeout)
                emit({"message": response.hex()})
                emit({"code": grpc.StatusCode.OK.name, "details": ""})
                return
            call = channel.unary_stream(args.method)(request, timeout=args.timeout)
            count = 0
            for response in call:
                emit({"message": response.hex()})
                count += 1
                if args.max_messages and count >= args.max_messages:
                    call.cancel()
                    break
            emit({"code": call.code().name, "details": call.details() or ""})
        except grpc.RpcError as error:
            emit({"code": error.code().name, "details": error.details() or ""})


if __name__ == "__main__":
    main()

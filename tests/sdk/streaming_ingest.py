"""Streaming ingestion of one file with the official SDK (azure-kusto-ingest), for tests/sdk_streaming_cpu.rs.

Usage: streaming_ingest.py CLUSTER_URL TOKEN DATABASE TABLE FORMAT FILE

Sends FILE to CLUSTER_URL (plain http on loopback: the test endpoint) with KustoStreamingIngestClient's
ingest_from_stream, TOKEN as the bearer, in the pieces an application streaming a file would use: at most the
SDK's own streaming limit (ManagedStreamingIngestClient.MAX_STREAMING_SIZE_IN_BYTES, 4 MiB), cut after a line.
The SDK compresses each piece itself (gzip, Python's default level 9). Prints one JSON line on stdout: the
requests made and this process's CPU (user + sys, resource.getrusage) for the ingestion loop and in all; exits
non-zero on any error.
"""

import io
import json
import resource
import sys

from azure.kusto.data import DataFormat, KustoConnectionStringBuilder
from azure.kusto.ingest import IngestionProperties, KustoStreamingIngestClient, StreamDescriptor
from azure.kusto.ingest.managed_streaming_ingest_client import ManagedStreamingIngestClient


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def pieces(data: bytes, limit: int):
    """Consecutive pieces of at most `limit` bytes, each ending after a newline (a longer line goes whole)."""
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            if cut >= start:
                end = cut + 1
            else:
                found = data.find(b"\n", end)
                end = len(data) if found < 0 else found + 1
        yield data[start:end]
        start = end


def main() -> int:
    url, token, database, table, data_format, path = sys.argv[1:7]
    kcsb = KustoConnectionStringBuilder.with_token_provider(url, lambda: token)
    client = KustoStreamingIngestClient(kcsb)
    props = IngestionProperties(database=database, table=table, data_format=DataFormat[data_format.upper()])
    with open(path, "rb") as f:
        data = f.read()
    before = cpu_seconds()
    requests = 0
    try:
        for piece in pieces(data, ManagedStreamingIngestClient.MAX_STREAMING_SIZE_IN_BYTES):
            client.ingest_from_stream(StreamDescriptor(io.BytesIO(piece)), ingestion_properties=props)
            requests += 1
    finally:
        client.close()
    ingest = cpu_seconds() - before
    print(json.dumps({"requests": requests, "ingest_cpu_s": ingest, "process_cpu_s": cpu_seconds()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

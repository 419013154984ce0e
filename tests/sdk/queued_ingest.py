"""Queued ingestion of one file with the official SDK (azure-kusto-ingest), for tests/sdk_fidelity.rs.

Usage: queued_ingest.py DM_URL TOKEN DATABASE TABLE FORMAT FILE

Asks the DM at DM_URL (plain http on loopback: the test endpoint) for ingestion resources and the identity
token with TOKEN as the bearer, uploads FILE to one of its containers and posts the queue message, as any
application using QueuedIngestClient would. Prints the message's source id on stdout; exits non-zero on
any error.
"""

import sys
import uuid

from azure.kusto.data import DataFormat, KustoConnectionStringBuilder
from azure.kusto.ingest import FileDescriptor, IngestionProperties, QueuedIngestClient


def main() -> int:
    dm_url, token, database, table, data_format, path = sys.argv[1:7]
    kcsb = KustoConnectionStringBuilder.with_token_provider(dm_url, lambda: token)
    # The DM URL is already the ingest endpoint: no "ingest-" prefix to add (and an IP has none to take).
    client = QueuedIngestClient(kcsb, auto_correct_endpoint=False)
    props = IngestionProperties(database=database, table=table, data_format=DataFormat[data_format.upper()])
    source_id = uuid.uuid4()
    try:
        client.ingest_from_file(FileDescriptor(path, source_id=source_id), ingestion_properties=props)
    finally:
        client.close()
    print(source_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())

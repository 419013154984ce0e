/*
 * reports: the delivery-report contract against the test endpoint (argv[1]: its http URL; argv[2]: a fresh spool
 * directory). The endpoint answers the first request with 503 (the Rust side queued that fault).
 *
 * - Every chunk gets exactly one final report (acknowledged, rejected or dropped), marked is_final, after any
 *   number of intermediate ones (failed, spooled), all with the same chunk id.
 * - wire_bytes and http_status are filled in every report of a chunk that was sent (503 for the failure).
 * - kedge_client_free spools what is still in RAM and reports it spooled, from inside the free.
 * - kedge_poll writes next_ms on every return.
 *
 * Prints "FAIL: ..." per failed check and a last line "N passed, M failed"; exits 0 only when M is 0.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kusto_edge.h"

static unsigned passed;
static unsigned failed;

static void check(int ok, const char *what)
{
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL: %s\n", what);
    }
}

#define MAX_CHUNKS 64

struct chunk {
    char id[40];
    unsigned finals;
    unsigned intermediates;
    int final_after_intermediate_ok;
};

struct seen {
    struct chunk chunks[MAX_CHUNKS];
    unsigned n;
    unsigned reports;
    unsigned spooled;
    unsigned failed_503;
    unsigned acknowledged;
    unsigned dropped;
    int dropped_was_spooled;
    int fields_ok;
    int in_free;
    unsigned spooled_in_free;
};

static struct chunk *chunk_of(struct seen *s, const char *id)
{
    unsigned i;
    for (i = 0; i < s->n; i++) {
        if (strcmp(s->chunks[i].id, id) == 0) {
            return &s->chunks[i];
        }
    }
    if (s->n == MAX_CHUNKS) {
        return NULL;
    }
    memset(&s->chunks[s->n], 0, sizeof s->chunks[s->n]);
    strncpy(s->chunks[s->n].id, id, sizeof s->chunks[s->n].id - 1);
    s->chunks[s->n].final_after_intermediate_ok = 1;
    return &s->chunks[s->n++];
}

static void on_report(void *userdata, const kedge_delivery_report *r)
{
    struct seen *s = userdata;
    struct chunk *c;
    int is_final_outcome = r->outcome == KEDGE_OUTCOME_ACKNOWLEDGED || r->outcome == KEDGE_OUTCOME_REJECTED ||
                           r->outcome == KEDGE_OUTCOME_DROPPED;
    s->reports++;
    if (r->chunk_id == NULL || strlen(r->chunk_id) != 36 || r->message == NULL || r->records == 0 ||
        r->raw_bytes == 0 || r->wire_bytes == 0 || r->destination != 0 || r->is_final != is_final_outcome ||
        r->from_dm != 0) {
        s->fields_ok = 0;
        printf("bad report: outcome %d final %d id %s records %llu raw %llu wire %llu dest %u\n", (int)r->outcome,
               (int)r->is_final, r->chunk_id ? r->chunk_id : "(null)", (unsigned long long)r->records,
               (unsigned long long)r->raw_bytes, (unsigned long long)r->wire_bytes, r->destination);
        return;
    }
    c = chunk_of(s, r->chunk_id);
    if (c == NULL) {
        s->fields_ok = 0;
        return;
    }
    if (r->is_final) {
        c->finals++;
    } else {
        if (c->finals > 0) {
            c->final_after_intermediate_ok = 0; /* an intermediate report after the final one */
        }
        c->intermediates++;
    }
    switch (r->outcome) {
    case KEDGE_OUTCOME_SPOOLED:
        s->spooled++;
        s->spooled_in_free += s->in_free;
        break;
    case KEDGE_OUTCOME_FAILED:
        break;
    case KEDGE_OUTCOME_DROPPED:
        s->dropped++;
        s->dropped_was_spooled = c->intermediates >= 1 && r->result == KEDGE_SPOOL_FULL;
        break;
    case KEDGE_OUTCOME_ACKNOWLEDGED:
        s->acknowledged++;
        if (r->http_status != 200 || r->result != KEDGE_OK) {
            s->fields_ok = 0;
        }
        break;
    default:
        break;
    }
    if (!r->is_final && r->http_status == 503) {
        s->failed_503++;
    }
}

static kedge_client *client_on(const char *url, const char *spool, struct seen *seen, const char *max_chunks)
{
    kedge_config *cfg = NULL;
    kedge_client *client = NULL;
    char err[256];
    uint32_t dest = 99;
    static const char *const kv[] = {"http.allow_plain", "true", "batch.bytes", "1024", "retry.max_attempts", "1",
                                     "retry.max_total_ms", "5000", "timeout.recv_ms", "5000"};
    size_t i;
    if (kedge_config_new(&cfg) != KEDGE_OK) {
        return NULL;
    }
    check(kedge_config_set(cfg, "url", url, err, sizeof err) == KEDGE_OK, "url");
    check(kedge_config_set(cfg, "spool.dir", spool, err, sizeof err) == KEDGE_OK, "spool.dir");
    for (i = 0; i + 1 < sizeof kv / sizeof kv[0]; i += 2) {
        check(kedge_config_set(cfg, kv[i], kv[i + 1], err, sizeof err) == KEDGE_OK, kv[i]);
    }
    if (max_chunks != NULL) {
        check(kedge_config_set(cfg, "spool.max_chunks", max_chunks, err, sizeof err) == KEDGE_OK,
              "spool.max_chunks");
    }
    check(kedge_config_set_delivery_callback(cfg, on_report, seen) == KEDGE_OK, "delivery callback");
    if (kedge_client_new(cfg, &client, err, sizeof err) != KEDGE_OK) {
        printf("kedge_client_new: %s\n", err);
        client = NULL;
    }
    kedge_config_free(cfg);
    if (client != NULL) {
        check(kedge_client_add_destination(client, "db", "Reports", "csv", NULL, &dest) == KEDGE_OK && dest == 0,
              "destination 0");
    }
    return client;
}

int main(int argc, char **argv)
{
    struct seen seen;
    kedge_client *client;
    kedge_result r;
    uint32_t next = 0xDEADBEEFu;
    unsigned i;
    char rec[32];

    if (argc != 3) {
        fprintf(stderr, "usage: reports URL SPOOL_DIR\n");
        return 2;
    }
    memset(&seen, 0, sizeof seen);
    seen.fields_ok = 1;
    client = client_on(argv[1], argv[2], &seen, NULL);
    if (client == NULL) {
        printf("%u passed, %u failed\n", passed, failed + 1);
        return 1;
    }

    /* 1. The first send meets a 503: the chunk is spooled (an intermediate report with the 503). */
    for (i = 0; i < 3; i++) {
        int n = snprintf(rec, sizeof rec, "%u,first", i);
        check(kedge_append(client, 0, (const uint8_t *)rec, (size_t)n) == KEDGE_OK, "append");
    }
    r = kedge_flush_timeout(client, 5000);
    check(r == KEDGE_SPOOLED, "a flush that met a 503 says the chunk is durable in the spool");
    check(seen.spooled == 1 && seen.failed_503 == 1, "one spooled report carrying the 503");
    check(seen.acknowledged == 0, "nothing acknowledged yet");

    /* 2. The backoff passes; poll replays it: its final report, same chunk id. next_ms is always written. */
    for (i = 0; i < 100 && seen.acknowledged == 0; i++) {
        next = 0xDEADBEEFu;
        r = kedge_poll(client, &next);
        check(next != 0xDEADBEEFu, "kedge_poll writes next_ms");
        if (seen.acknowledged == 0) {
            struct timespec ts;
            ts.tv_sec = 0;
            ts.tv_nsec = (long)(next > 200 ? 200 : next) * 1000000L;
            nanosleep(&ts, NULL);
        }
    }
    check(seen.acknowledged == 1, "the spooled chunk is replayed and acknowledged");
    check(seen.n == 1, "spooled and acknowledged: the same chunk id");

    /* 3. Freeing the client spools what is still in RAM, reporting it from inside the free. */
    for (i = 0; i < 5; i++) {
        int n = snprintf(rec, sizeof rec, "%u,second", i);
        check(kedge_append(client, 0, (const uint8_t *)rec, (size_t)n) == KEDGE_OK, "append before free");
    }
    seen.in_free = 1;
    kedge_client_free(client);
    seen.in_free = 0;
    check(seen.spooled_in_free == 1, "kedge_client_free reports the batch it spooled");

    /* 4. The next client on the spool delivers it: its final report. */
    client = client_on(argv[1], argv[2], &seen, NULL);
    check(client != NULL, "a second client on the same spool");
    if (client != NULL) {
        r = kedge_flush_timeout(client, 5000);
        check(r == KEDGE_OK, "the second client's flush delivers the spooled batch");
        kedge_client_free(client);
    }

    /* 5. A full spool (drop-oldest, 2 chunks) deletes its oldest chunk for a newer one: that chunk's own final
     * report, DROPPED, with its destination and id. A last client delivers the two kept. */
    client = client_on(argv[1], argv[2], &seen, "2");
    check(client != NULL, "a client with spool.max_chunks=2");
    if (client != NULL) {
        unsigned k;
        for (k = 0; k < 3; k++) {
            int n = snprintf(rec, sizeof rec, "%u,third", k);
            check(kedge_append(client, 0, (const uint8_t *)rec, (size_t)n) == KEDGE_OK, "append before spooling");
            check(kedge_flush_to_spool(client) == KEDGE_OK, "kedge_flush_to_spool");
        }
        kedge_client_free(client);
    }
    check(seen.dropped == 1 && seen.dropped_was_spooled, "the dropped chunk has its own final report (SPOOL_FULL)");
    client = client_on(argv[1], argv[2], &seen, NULL);
    check(client != NULL, "a last client on the spool");
    if (client != NULL) {
        check(kedge_flush_timeout(client, 5000) == KEDGE_OK, "the last client delivers the two kept chunks");
        kedge_client_free(client);
    }

    check(seen.fields_ok, "every report has an id, records, raw and wire bytes, destination 0 and is_final right");
    check(seen.n == 5, "five chunks in all");
    for (i = 0; i < seen.n; i++) {
        check(seen.chunks[i].finals == 1, "exactly one final report per chunk");
        check(seen.chunks[i].intermediates >= 1, "each chunk was spooled first (an intermediate report)");
        check(seen.chunks[i].final_after_intermediate_ok, "no intermediate report after a final one");
    }
    printf("%u passed, %u failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

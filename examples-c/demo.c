/*
 * demo.c: a gateway's main loop. Four sensors report temperature and humidity as JSON, a door reports events as
 * CSV; every record goes through kusto-edge to two tables. When the uplink fails, batches go to the flash spool;
 * when it is back, kedge_poll replays them. One status line a second shows where the data is.
 *
 *   demo URL CA_FILE SPOOL_DIR SECONDS
 *
 * Prints "demo: appended N records" as its last line on stdout, for the demo driver to check what arrived.
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kusto_edge.h"

struct outcomes {
    uint64_t acknowledged, spooled, rejected, dropped;
};

static void on_delivery(void *userdata, const struct kedge_delivery_report *r)
{
    struct outcomes *o = userdata;
    switch (r->outcome) {
    case KEDGE_OUTCOME_ACKNOWLEDGED: o->acknowledged += r->records; break;
    case KEDGE_OUTCOME_SPOOLED:
        o->spooled += r->records;
        printf("        chunk %.8s… (%" PRIu64 " records) -> flash spool\n", r->chunk_id, r->records);
        break;
    case KEDGE_OUTCOME_REJECTED: o->rejected += r->records; break;
    case KEDGE_OUTCOME_DROPPED: o->dropped += r->records; break;
    default: break;
    }
}

static void on_log(void *userdata, kedge_log_level level, const char *message)
{
    (void)userdata;
    (void)level;
    printf("        [kusto-edge] %s\n", message);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static int set(kedge_config *cfg, const char *key, const char *value)
{
    char err[256];
    if (kedge_config_set(cfg, key, value, err, sizeof err) != KEDGE_OK) {
        fprintf(stderr, "demo: %s\n", err);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: demo URL CA_FILE SPOOL_DIR SECONDS\n");
        return 64;
    }
    const double seconds = atof(argv[4]);
    struct outcomes outcomes = {0, 0, 0, 0};
    kedge_config *cfg = NULL;
    if (kedge_config_new(&cfg) != KEDGE_OK) {
        return 1;
    }
    /* Short timeouts and backoff so the demo shows a whole outage and recovery in a few seconds. */
    if (set(cfg, "url", argv[1]) || set(cfg, "tls.ca_file", argv[2]) || set(cfg, "spool.dir", argv[3]) ||
        set(cfg, "batch.max_age_ms", "400") || set(cfg, "retry.max_attempts", "2") ||
        set(cfg, "retry.max_total_ms", "600") || set(cfg, "timeout.connect_ms", "500") ||
        set(cfg, "timeout.recv_ms", "1000") || set(cfg, "backoff.max_ms", "1000") ||
        set(cfg, "client.app", "kusto-edge-demo") || set(cfg, "log.level", "warn")) {
        kedge_config_free(cfg);
        return 64;
    }
    kedge_config_set_delivery_callback(cfg, on_delivery, &outcomes);
    kedge_config_set_log_callback(cfg, on_log, NULL);
    uint64_t bound = 0;
    kedge_config_memory_bound(cfg, &bound);

    kedge_client *client = NULL;
    char err[512];
    kedge_result r = kedge_client_new(cfg, &client, err, sizeof err);
    kedge_config_free(cfg);
    if (r != KEDGE_OK) {
        fprintf(stderr, "demo: kedge_client_new: %s\n", err);
        return 1;
    }
    uint32_t telemetry = 0, events = 0;
    if (kedge_client_add_destination(client, "edge", "Telemetry", "json", NULL, &telemetry) != KEDGE_OK ||
        kedge_client_add_destination(client, "edge", "Events", "csv", NULL, &events) != KEDGE_OK) {
        kedge_client_last_error(client, err, sizeof err, NULL);
        fprintf(stderr, "demo: %s\n", err);
        kedge_client_free(client);
        return 1;
    }
    printf("demo: kusto-edge %s, memory bound of this client %" PRIu64 " KiB, streaming for %.0f s\n",
           kedge_version(), bound / 1024, seconds);

    uint64_t appended = 0, seq = 0;
    const double start = now_s();
    double next_status = start + 1.0;
    while (now_s() - start < seconds) {
        char rec[256];
        for (int sensor = 1; sensor <= 4; sensor++) {
            int n = snprintf(rec, sizeof rec,
                             "{\"seq\":%" PRIu64 ",\"device\":\"sensor-%d\",\"temp\":%.1f,\"humidity\":%d}", seq,
                             sensor, 19.0 + (double)((seq * 7 + (uint64_t)sensor) % 60) / 10.0,
                             40 + (int)((seq + (uint64_t)sensor) % 20));
            /* KEDGE_QUEUE_FULL: not taken (the chunks wait for kedge_poll below); offered again next round. */
            if (kedge_append(client, telemetry, (const uint8_t *)rec, (size_t)n) == KEDGE_OK) {
                appended++;
                seq++;
            }
        }
        if (seq % 20 == 0) {
            int n = snprintf(rec, sizeof rec, "%" PRIu64 ",door-1,%s", seq, (seq / 20) % 2 ? "open" : "closed");
            if (kedge_append(client, events, (const uint8_t *)rec, (size_t)n) == KEDGE_OK) {
                appended++;
            }
        }
        uint32_t next_ms = 0;
        kedge_poll(client, &next_ms);
        if (now_s() >= next_status) {
            struct kedge_stats s;
            kedge_client_stats(client, &s, sizeof s);
            printf("t=%2.0fs  appended %5" PRIu64 "  acknowledged %5" PRIu64 "  in RAM %4" PRIu64
                   "  in spool %2" PRIu64 " chunks (%5.1f KiB)  replayed %5" PRIu64 "\n",
                   now_s() - start, s.records_appended, s.records_acknowledged, s.records_buffered, s.spool_chunks,
                   (double)s.spool_bytes / 1024.0, s.records_replayed);
            next_status += 1.0;
        }
        sleep_ms(50);
    }
    /* Deliver what is left: flush until everything is acknowledged (bounded). */
    for (int i = 0; i < 40; i++) {
        struct kedge_stats s;
        r = kedge_flush(client);
        kedge_client_stats(client, &s, sizeof s);
        if (r == KEDGE_OK && s.spool_chunks == 0 && s.records_buffered == 0) {
            break;
        }
        sleep_ms(250);
    }
    struct kedge_stats s;
    kedge_client_stats(client, &s, sizeof s);
    printf("demo: %" PRIu64 " requests, %" PRIu64 " retries; %.1f KiB raw went out as %.1f KiB gzip; %" PRIu64
           " records went through the spool, %" PRIu64 " replayed\n",
           s.requests, s.retries, (double)s.bytes_sent_raw / 1024.0, (double)s.bytes_sent_wire / 1024.0,
           s.records_spooled, s.records_replayed);
    printf("demo: outcomes: %" PRIu64 " acknowledged, %" PRIu64 " rejected, %" PRIu64 " dropped\n",
           outcomes.acknowledged, outcomes.rejected, outcomes.dropped);
    kedge_client_free(client);
    printf("demo: appended %" PRIu64 " records\n", appended);
    return s.records_acknowledged == appended ? 0 : 1;
}

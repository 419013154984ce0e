/*
 * sensor.c: the smallest complete kusto-edge program. A sensor loop appends JSON telemetry records, a main loop
 * calls kedge_poll for the periodic work, and kedge_flush sends what is left before the program ends.
 *
 *   sensor [URL [CA_FILE]]
 *
 * URL      cluster URL (or env KEDGE_URL), e.g. https://mycluster.westeurope.kusto.windows.net
 * CA_FILE  PEM file of an extra CA to trust (or env KEDGE_CA_FILE); for private CAs and test endpoints
 * env KEDGE_TOKEN     bearer token (optional), KEDGE_DATABASE / KEDGE_TABLE (default "edge" / "Telemetry"),
 *     SENSOR_RECORDS  how many records to send (default 300)
 *
 * Each record is {"seq":N,"device":"sensor-1","temp":..,"humidity":..} in the `json` format (one object per line).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kusto_edge.h"

/* Counted by the delivery callback: the library's final word per chunk. */
struct delivery_counts {
    unsigned long long acknowledged;
    unsigned long long rejected;
};

static void on_delivery(void *userdata, const struct kedge_delivery_report *r)
{
    struct delivery_counts *counts = userdata;
    if (r->outcome == KEDGE_OUTCOME_ACKNOWLEDGED) {
        counts->acknowledged += r->records;
    } else if (r->outcome == KEDGE_OUTCOME_REJECTED) {
        counts->rejected += r->records;
        fprintf(stderr, "sensor: chunk %s (%llu records) rejected: %s\n", r->chunk_id,
                (unsigned long long)r->records, r->message);
    }
    /* KEDGE_OUTCOME_FAILED: the chunk is kept and retried by later calls; nothing to do here. */
}

static void on_log(void *userdata, kedge_log_level level, const char *message)
{
    (void)userdata;
    fprintf(stderr, "kusto-edge[%u]: %s\n", (unsigned)level, message);
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000u);
    ts.tv_nsec = (long)(ms % 1000u) * 1000000L;
    while (nanosleep(&ts, &ts) != 0) {
        /* interrupted by a signal: sleep the rest */
    }
}

/* The codes after which the data is kept (in RAM or in the spool) and the same call may succeed later. */
static int keeps_data(kedge_result r)
{
    return r == KEDGE_TRANSIENT_FAILURE || r == KEDGE_BACKING_OFF || r == KEDGE_TARGET_NOT_READY ||
           r == KEDGE_AUTH_REFUSED || r == KEDGE_SPOOLED || r == KEDGE_SPOOL_FULL || r == KEDGE_SPOOL_IO ||
           r == KEDGE_QUEUE_FULL;
}

static int set(kedge_config *config, const char *key, const char *value)
{
    char err[256];
    kedge_result r = kedge_config_set(config, key, value, err, sizeof err);
    if (r != KEDGE_OK) {
        fprintf(stderr, "sensor: %s\n", err);
        return -1;
    }
    return 0;
}

static void print_last_error(const kedge_client *client, const char *what, kedge_result r)
{
    char msg[512];
    if (kedge_client_last_error(client, msg, sizeof msg, NULL) != KEDGE_OK) {
        msg[0] = '\0';
    }
    fprintf(stderr, "sensor: %s: %s: %s\n", what, kedge_result_str(r), msg);
}

static const char *env_or(const char *name, const char *fallback)
{
    const char *v = getenv(name);
    return (v != NULL && v[0] != '\0') ? v : fallback;
}

int main(int argc, char **argv)
{
    const char *url = argc > 1 ? argv[1] : env_or("KEDGE_URL", NULL);
    const char *ca_file = argc > 2 ? argv[2] : env_or("KEDGE_CA_FILE", NULL);
    const char *token = env_or("KEDGE_TOKEN", NULL);
    const char *database = env_or("KEDGE_DATABASE", "edge");
    const char *table = env_or("KEDGE_TABLE", "Telemetry");
    long n_records = strtol(env_or("SENSOR_RECORDS", "300"), NULL, 10);
    struct delivery_counts counts = {0, 0};
    kedge_config *config = NULL;
    kedge_client *client = NULL;
    uint32_t dest = 0;
    kedge_stats stats;
    char err[256];
    kedge_result r;
    long i;
    int status = 1;

    if (url == NULL || n_records <= 0) {
        fprintf(stderr, "usage: %s URL [CA_FILE]   (or env KEDGE_URL, KEDGE_CA_FILE, KEDGE_TOKEN)\n", argv[0]);
        return 64;
    }

    /* 1. Configuration: string keys, checked one by one. */
    if (kedge_config_new(&config) != KEDGE_OK) {
        fprintf(stderr, "sensor: out of memory\n");
        return 1;
    }
    if (set(config, "url", url) != 0 || set(config, "batch.bytes", "65536") != 0 ||
        set(config, "batch.max_age_ms", "1000") != 0 || set(config, "destinations.max", "1") != 0 ||
        set(config, "client.app", "sensor-example") != 0 || set(config, "log.level", "warn") != 0) {
        goto out;
    }
    /* A local test endpoint may speak plain http; the library allows it for loopback hosts only. */
    if (strncmp(url, "http://", 7) == 0 && set(config, "http.allow_plain", "true") != 0) {
        goto out;
    }
    if (ca_file != NULL && set(config, "tls.ca_file", ca_file) != 0) {
        goto out;
    }
    if (token != NULL && set(config, "auth.token", token) != 0) {
        goto out;
    }
    if (kedge_config_set_delivery_callback(config, on_delivery, &counts) != KEDGE_OK ||
        kedge_config_set_log_callback(config, on_log, NULL) != KEDGE_OK) {
        goto out;
    }
    {
        uint64_t bound = 0;
        if (kedge_config_memory_bound(config, &bound) == KEDGE_OK) {
            printf("sensor: the client will hold at most %llu KiB of heap\n", (unsigned long long)(bound / 1024));
        }
    }

    /* 2. Client (allocates its buffers now) and one destination. The config may be freed right away. */
    r = kedge_client_new(config, &client, err, sizeof err);
    kedge_config_free(config);
    config = NULL;
    if (r != KEDGE_OK) {
        fprintf(stderr, "sensor: cannot create client: %s: %s\n", kedge_result_str(r), err);
        goto out;
    }
    r = kedge_client_add_destination(client, database, table, "json", NULL, &dest);
    if (r != KEDGE_OK) {
        print_last_error(client, "add_destination", r);
        goto out;
    }

    /* 3. The sensor loop. kedge_append only buffers; kedge_poll does the sending. */
    for (i = 0; i < n_records; i++) {
        char record[160];
        uint32_t next_ms = 0;
        int tries = 0;
        int len = snprintf(record, sizeof record,
                           "{\"seq\":%ld,\"device\":\"sensor-1\",\"temp\":%.1f,\"humidity\":%d}", i,
                           20.0 + (double)(i % 50) / 10.0, (int)(40 + i % 20));
        if (len < 0 || (size_t)len >= sizeof record) {
            fprintf(stderr, "sensor: record %ld does not fit its buffer\n", i);
            goto out;
        }
        for (;;) {
            r = kedge_append(client, dest, (const uint8_t *)record, (size_t)len);
            if (r == KEDGE_OK) {
                break;
            }
            /* Anything but a full lane is a record that can never be taken (or a bug): stop. */
            if (r != KEDGE_QUEUE_FULL || tries++ > 60) {
                print_last_error(client, "append", r);
                goto out;
            }
            /* The lane is full: poll sends its chunks. If it could not (the service is in trouble), wait as long
             * as it says before offering the record again. next_ms is written whatever poll returns. */
            r = kedge_poll(client, &next_ms);
            if (r != KEDGE_OK || tries > 1) {
                sleep_ms(next_ms < 1000 ? next_ms : 1000);
            }
        }
        /* The main loop's periodic work: sends full batches and those older than batch.max_age_ms. Its failures
         * keep the data (it stays buffered or spooled), except a refused chunk, which is reported and gone. */
        r = kedge_poll(client, &next_ms);
        if (r != KEDGE_OK && !keeps_data(r) && r != KEDGE_DATA_REJECTED) {
            print_last_error(client, "poll", r);
            goto out;
        }
    }

    /* 4. Send what is left before shutting down. */
    for (i = 0; i < 10; i++) {
        r = kedge_flush(client);
        if (r == KEDGE_OK || !keeps_data(r)) {
            break;
        }
        sleep_ms(1000);
    }
    if (r != KEDGE_OK) {
        print_last_error(client, "flush", r);
    }

    /* 5. What happened. */
    if (kedge_client_stats(client, &stats, sizeof stats) == KEDGE_OK) {
        printf("sensor: %llu records appended, %llu acknowledged, %llu rejected; %llu bytes raw, %llu on the wire, "
               "%llu requests, %llu retries\n",
               (unsigned long long)stats.records_appended, counts.acknowledged, counts.rejected,
               (unsigned long long)stats.bytes_sent_raw, (unsigned long long)stats.bytes_sent_wire,
               (unsigned long long)stats.requests, (unsigned long long)stats.retries);
    }
    if (r == KEDGE_OK && counts.acknowledged == (unsigned long long)n_records) {
        status = 0;
    }

out:
    kedge_client_free(client);
    kedge_config_free(config);
    return status;
}

/*
 * kedge-send: streams records, one per line, from files or stdin into an Azure Data Explorer (Kusto) table over
 * streaming ingestion, with kusto-edge. For gateway integrators: a shell pipeline in, sysexits codes out.
 *
 * Memory is fixed at start: one line buffer of --batch-bytes and one read buffer, whatever the input size.
 * Exit codes are stable (see usage()).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kusto_edge.h"

/* sysexits.h values, spelled out: not every libc a gateway runs has the header. */
enum {
    EXIT_ALL_ACKNOWLEDGED = 0,
    EXIT_OTHER = 1,
    EXIT_USAGE = 64,       /* EX_USAGE: bad or missing flags, bad -X key or value, unreadable FILE */
    EXIT_DATA = 65,        /* EX_DATAERR: the service rejected records, or the input had invalid records */
    EXIT_UNAVAILABLE = 69, /* EX_UNAVAILABLE: gave up on transient failures or a target that is not ready */
    EXIT_TEMPFAIL = 75,    /* EX_TEMPFAIL: gave up for now, but every record not delivered is safe in the spool */
    EXIT_NOPERM = 77       /* EX_NOPERM: gave up on authentication refused */
};

#define DEFAULT_BATCH_BYTES 1048576UL /* the library's default batch.bytes */
#define READ_CHUNK_BYTES 65536
#define MAX_SLEEP_MS 1000u
#define MAX_KEY_LEN 128

static void usage(FILE *out)
{
    fputs("usage: kedge-send --url URL --database DB --table T [options] [FILE...]\n"
          "\n"
          "Streams records, one per line, from each FILE (or stdin, or '-') into a Kusto table over\n"
          "streaming ingestion. Empty lines are skipped; a trailing \\r is removed.\n"
          "\n"
          "  --url URL            cluster URL, https://CLUSTER.REGION.kusto.windows.net\n"
          "  --database DB        database name\n"
          "  --table T            table name\n"
          "  --format F           data format of the lines (default multijson; csv, tsv, psv, json, ...)\n"
          "  --mapping NAME       ingestion mapping to apply\n"
          "  --token TOKEN        bearer token (default: env KEDGE_TOKEN, which other users cannot see in ps)\n"
          "  --ca-file PEM        extra CA certificates to trust (private CA, test endpoint)\n"
          "  --connection-string S  Kusto connection string: cluster, database, credential (--url and\n"
          "                       --database are then optional)\n"
          "  --tenant T           Entra ID tenant (with --client-id and a secret or certificate)\n"
          "  --client-id ID       application (client) id\n"
          "  --client-secret-file F  file holding the client secret\n"
          "  --cert-file PEM      certificate for certificate credentials (may hold the key too)\n"
          "  --key-file PEM       its RSA private key (PKCS#8 or PKCS#1)\n"
          "  --managed-identity[=CLIENT_ID]  Azure managed identity (VM or Arc), system or user-assigned\n"
          "  --authority-host URL Entra ID login host (sovereign clouds, tests)\n"
          "  --proxy URL          HTTP CONNECT proxy, http://[user:pass@]host:port (default: $HTTPS_PROXY)\n"
          "  --allow-http         allow http:// to a loopback endpoint (http.allow_plain=true)\n"
          "  --batch-bytes N      raw bytes per request, 1024..4194304 (default 1048576); also the longest line\n"
          "  --gzip-level N       gzip level of request bodies, 1 (fastest) .. 9 (smallest) (default 3)\n",
          out);
    /* Split: C99 guarantees string literals of 4095 characters only. */
    fputs("  --mode M             streaming (default), queued (blob upload + the DM's queue) or managed\n"
          "                       (streaming first, queued when streaming cannot take it)\n"
          "  --dm-url URL         data-management endpoint for queued/managed (default: the url with ingest-)\n"
          "  --report R           DM reports queued chunks ask for: none, failures (default) or all\n"
          "  --wait SECONDS       after sending, wait up to SECONDS for the DM's reports on the queued chunks:\n"
          "                       ends early when every chunk has its report (with --report all: ingested or\n"
          "                       failed; with failures, silence is success, so only when every chunk failed)\n"
          "  -X key=value         any library configuration key, e.g. -X retry.max_attempts=8 (repeatable)\n"
          "  --give-up-secs N     give up after N seconds of failures without progress (default 60)\n"
          "  --spool DIR          keep undelivered records in a flash spool directory across runs and reboots;\n"
          "                       the spool is replayed before new input is sent\n"
          "  --spool-max-bytes N  upper bound of the spool on flash (default 67108864)\n"
          "  --spool-policy P     when the spool is full: drop-oldest (default) or reject-new\n"
          "  --spool-key-file F   32-byte key (raw or 64 hex digits): encrypt the spool with AES-256-GCM\n"
          "  --drain-only         send what is in the spool and read no input\n"
          "  --spool-status       print what the spool holds (per destination, quarantined, locked) and exit;\n"
          "                       sends nothing, needs no --url, --database or --table\n"
          "  --spool-purge        delete the spooled chunks of --database/--table (or of every table with\n"
          "                       --all-tables), pending and quarantined, and exit; sends nothing\n"
          "  --spool-requeue      move the chunks the service refused (kept in the spool's rejected/) of\n"
          "                       --database/--table (or --all-tables) back to be sent, after fixing their cause\n"
          "                       (a mapping, the table's schema), and exit; --drain-only sends them\n"
          "  --all-tables         with --spool-purge or --spool-requeue: every table in the spool\n"
          "  --stats-interval N   print the client's stats as one JSON line to stderr every N seconds\n"
          "  --durable-every N    after every N records, write what is buffered to the spool and print\n"
          "                       'durable N' to stdout: records up to there survive a crash (needs --spool)\n"
          "  --quiet              print nothing but a final error\n"
          "  --verbose            print the library's debug log and every delivery report\n"
          "  --help               print this and exit\n"
          "\n"
          "Exit status: 0 every record acknowledged (or queued; with --report all --wait, confirmed ingested by\n"
          "the DM); 64 usage error; 65 records rejected by the service or by the DM (its error code on stderr),\n"
          "or invalid in the input; 69 service unavailable after retries, a transient failure the DM reported,\n"
          "or (--report all --wait) chunks not confirmed in time; 75 not all delivered (or queued) yet, but the\n"
          "rest is safe in the spool; 77 authentication refused; 1 other.\n",
          out);
}

struct options {
    const char *url;
    const char *database;
    const char *table;
    const char *format;
    const char *mapping;
    const char *token;
    const char *ca_file;
    const char *connection_string;
    const char *tenant;
    const char *client_id;
    const char *client_secret_file;
    const char *cert_file;
    const char *key_file;
    const char *authority_host;
    const char *proxy;
    int managed_identity;
    const char *managed_identity_id;
    const char *batch_bytes;
    const char *gzip_level;
    int allow_http;
    long give_up_secs;
    const char *spool;
    const char *spool_max_bytes;
    const char *spool_policy;
    const char *spool_key_file;
    const char *mode;
    const char *dm_url;
    const char *report;
    long wait_secs; /* --wait: 0, off */
    int drain_only;
    int spool_status;
    int spool_purge;
    int spool_requeue;
    int all_tables;
    long durable_every;
    long stats_interval; /* seconds; 0: off */
    int verbosity; /* 0 quiet, 1 default, 2 verbose */
    const char **x_opts; /* "key=value", in command-line order */
    size_t n_x_opts;
    const char **files;
    size_t n_files;
};

/* Shared with the callbacks (through userdata, no globals). */
struct counters {
    unsigned long long acknowledged;
    unsigned long long rejected;
    unsigned long long dropped; /* by a full spool (spool.policy=drop-oldest) */
    kedge_result last_failure; /* result of the last chunk that failed for now */
    /* Queued ingestion: chunks posted to the DM's queue, and the DM's final reports on them (which carry no HTTP
     * status and no wire bytes: they come from its notification queues, not from an answer to a send). */
    unsigned long long queued_chunks;
    unsigned long long dm_ingested_chunks;
    unsigned long long dm_rejected_chunks; /* a permanent failure: the data will never go in */
    unsigned long long dm_rejected_records;
    unsigned long long dm_transient_chunks; /* a transient failure the DM gave up on */
    unsigned long long dm_transient_records;
    char dm_error[512]; /* the first failure the DM reported, with its error code */
    int verbosity;
    /* A message that repeats (numbers aside) is printed once, then counted: a failing disk or a long outage
     * must not flood the log. A few recent messages are remembered, since failures come in alternating pairs. */
    struct {
        char text[512];
        unsigned long repeats;
        unsigned long long used; /* for evicting the least recently seen */
    } recent[4];
    unsigned long long log_clock;
};

struct run {
    kedge_client *client;
    uint32_t dest;
    struct counters *counts;
    long long give_up_ms; /* long is 32 bits on armv7: days of ms need more */
    int failing;                /* failures since the last progress */
    long long first_failure_ms; /* when that run of failures began */
    unsigned long long acknowledged_seen;
    kedge_result cause; /* the last keep-the-data failure that says why (not BACKING_OFF or SPOOLED) */
    long durable_every; /* 0: off */
    unsigned long long taken; /* records taken (or found invalid) so far, in input order */
    /* Where the batch in RAM began: if it is lost, the input resumes there. */
    const char *batch_file;
    unsigned long batch_line;
    int lines_off; /* kedge_append_lines refused the format: every record goes through kedge_append */
    int lane_full; /* kedge_append_lines just said KEDGE_QUEUE_FULL: send_record polls before it appends */
};

/*
 * Signs of life for a run of days: on a terminal, a one-line progress display refreshed about once a second;
 * with --stats-interval N, the client's stats as one JSON line every N seconds (for log collectors). Program
 * state, like the stop flag: one client, one thread.
 */
static const char *PROG = "kedge-send";

static struct {
    kedge_client *client;
    int tty;
    long long stats_interval_ms;
    long long started_ms, last_progress_ms, last_stats_ms;
    int progress_shown;
} ticker;

static long long now_ms(void);

static void print_stats_json(const kedge_stats *st)
{
    fprintf(stderr,
            "{\"records_appended\":%llu,\"bytes_appended\":%llu,\"records_acknowledged\":%llu,"
            "\"records_rejected\":%llu,\"records_buffered\":%llu,\"requests\":%llu,\"retries\":%llu,"
            "\"failures\":%llu,\"last_http_status\":%llu,\"bytes_sent_wire\":%llu,\"chunks_spooled\":%llu,"
            "\"records_replayed\":%llu,\"records_dropped\":%llu,\"chunks_corrupt\":%llu,\"chunks_locked\":%llu,"
            "\"spool_chunks\":%llu,\"spool_bytes\":%llu,\"spool_io_errors\":%llu,\"appends_queue_full\":%llu}\n",
            (unsigned long long)st->records_appended, (unsigned long long)st->bytes_appended,
            (unsigned long long)st->records_acknowledged, (unsigned long long)st->records_rejected,
            (unsigned long long)st->records_buffered, (unsigned long long)st->requests,
            (unsigned long long)st->retries, (unsigned long long)st->failures,
            (unsigned long long)st->last_http_status, (unsigned long long)st->bytes_sent_wire,
            (unsigned long long)st->chunks_spooled, (unsigned long long)st->records_replayed,
            (unsigned long long)st->records_dropped, (unsigned long long)st->chunks_corrupt,
            (unsigned long long)st->chunks_locked, (unsigned long long)st->spool_chunks,
            (unsigned long long)st->spool_bytes, (unsigned long long)st->spool_io_errors,
            (unsigned long long)st->appends_queue_full);
}

/* Set by every call that can send or spool (kedge_poll and the flushes; kedge_append never does): only after one
 * of them can the records buffered drop, so only then can the next record taken start a batch (send_record looks
 * then, not after every record: a kedge_client_stats per line was 2 % of the CPU on a large file). */
static int sender_ran = 1;

static kedge_result poll_client(kedge_client *client, uint32_t *next_ms)
{
    sender_ran = 1;
    return kedge_poll(client, next_ms);
}

static kedge_result flush_client(kedge_client *client)
{
    sender_ran = 1;
    return kedge_flush(client);
}

static kedge_result flush_client_to_spool(kedge_client *client)
{
    sender_ran = 1;
    return kedge_flush_to_spool(client);
}

static void tick(void)
{
    long long now;
    kedge_stats st;
    if (ticker.client == NULL || (!ticker.tty && ticker.stats_interval_ms == 0)) {
        return;
    }
    now = now_ms();
    if (ticker.tty && now - ticker.last_progress_ms >= 1000 &&
        kedge_client_stats(ticker.client, &st, sizeof st) == KEDGE_OK) {
        double secs = (double)(now - ticker.started_ms) / 1000.0;
        ticker.last_progress_ms = now;
        ticker.progress_shown = 1;
        fprintf(stderr, "\r%s: %llu records, %.1f MB, %.0f records/s, %llu acknowledged, spool %llu chunks (%.1f MB)  ",
                PROG, (unsigned long long)st.records_appended, (double)st.bytes_appended / 1e6,
                secs > 0 ? (double)st.records_appended / secs : 0.0, (unsigned long long)st.records_acknowledged,
                (unsigned long long)st.spool_chunks, (double)st.spool_bytes / 1e6);
    }
    if (ticker.stats_interval_ms > 0 && now - ticker.last_stats_ms >= ticker.stats_interval_ms &&
        kedge_client_stats(ticker.client, &st, sizeof st) == KEDGE_OK) {
        ticker.last_stats_ms = now;
        if (ticker.progress_shown) {
            fputc('\n', stderr);
            ticker.progress_shown = 0;
        }
        print_stats_json(&st);
    }
}

static void end_progress(void)
{
    if (ticker.progress_shown) {
        fputc('\n', stderr);
        ticker.progress_shown = 0;
    }
}

/* Set by SIGTERM, SIGINT and SIGHUP: stop reading, deliver or spool what was taken, exit. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig)
{
    stop_signal = sig;
}

/*
 * A fixed-size line reader on a file descriptor: never allocates after open, whatever the input. It waits for
 * input with poll() and a timeout taken from kedge_poll, so a pipe that stays open (tail -F | kedge-send) still
 * has its batches sent by age, and a stop signal is seen at once.
 */
struct reader {
    int fd;
    kedge_client *client;
    const char *name;
    char *chunk;
    size_t chunk_len;
    size_t chunk_pos;
    int eof;
    int interrupted; /* input ended by a stop signal, not by its end */
    int csv;         /* CSV-like format: a newline inside a quoted field belongs to the record */
    int in_quotes;   /* inside a quoted field of the record being read */
    unsigned long record_line; /* the line the last record began on (line_no counts physical lines) */
    unsigned long line_no;
};

static long long now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return 0;
    }
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wall-clock milliseconds since the Unix epoch (the spool's timestamps). */
static long long now_wall_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) {
        return 0;
    }
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1000u);
    ts.tv_nsec = (long)(ms % 1000u) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !stop_signal) {
        /* another signal: sleep the rest */
    }
}

/* The codes after which the data is kept (in RAM or in the spool) and the same call may succeed later. */
static int keeps_data(kedge_result r)
{
    return r == KEDGE_TRANSIENT_FAILURE || r == KEDGE_BACKING_OFF || r == KEDGE_TARGET_NOT_READY ||
           r == KEDGE_AUTH_REFUSED || r == KEDGE_SPOOLED || r == KEDGE_SPOOL_FULL || r == KEDGE_SPOOL_IO ||
           r == KEDGE_QUEUE_FULL;
}

/* Nothing left to deliver: no record in RAM, no chunk in the spool. */
static int all_sent(const kedge_stats *st)
{
    return st->records_buffered == 0 && st->spool_chunks == 0;
}

static const char *level_name(kedge_log_level level)
{
    switch (level) {
    case KEDGE_LOG_ERROR:
        return "error";
    case KEDGE_LOG_WARN:
        return "warn";
    case KEDGE_LOG_INFO:
        return "info";
    case KEDGE_LOG_DEBUG:
        return "debug";
    default:
        return "log";
    }
}

static void print_repeats(struct counters *c, size_t k)
{
    if (c->recent[k].repeats > 0) {
        fprintf(stderr, "%s: (repeated %lu more times, numbers aside: %.80s...)\n", PROG, c->recent[k].repeats,
                c->recent[k].text);
        c->recent[k].repeats = 0;
    }
}

static void flush_repeats(struct counters *c)
{
    size_t k;
    for (k = 0; k < sizeof c->recent / sizeof c->recent[0]; k++) {
        print_repeats(c, k);
    }
}

/* The same message but for its numbers ("next try in 212 ms"): a repeat, for the log's purposes. */
static int same_but_numbers(const char *a, const char *b)
{
    for (;;) {
        if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
            while (*a >= '0' && *a <= '9') {
                a++;
            }
            while (*b >= '0' && *b <= '9') {
                b++;
            }
            continue;
        }
        if (*a != *b) {
            return 0;
        }
        if (*a == '\0') {
            return 1;
        }
        a++;
        b++;
    }
}

static void on_log(void *userdata, kedge_log_level level, const char *message)
{
    struct counters *c = userdata;
    size_t k, oldest = 0;
    const size_t n = sizeof c->recent / sizeof c->recent[0];
    c->log_clock++;
    for (k = 0; k < n; k++) {
        if (c->recent[k].used != 0 && strlen(message) < sizeof c->recent[k].text &&
            same_but_numbers(c->recent[k].text, message)) {
            c->recent[k].repeats++;
            c->recent[k].used = c->log_clock;
            return;
        }
        if (c->recent[k].used < c->recent[oldest].used) {
            oldest = k;
        }
    }
    end_progress();
    print_repeats(c, oldest);
    strncpy(c->recent[oldest].text, message, sizeof c->recent[oldest].text - 1);
    c->recent[oldest].text[sizeof c->recent[oldest].text - 1] = '\0';
    c->recent[oldest].used = c->log_clock;
    fprintf(stderr, "%s: %s: %s\n", PROG, level_name(level), message);
}

/* A final report that came from the DM (its notification or status row about a chunk queued earlier). */
static int from_dm(const struct kedge_delivery_report *r)
{
    return r->from_dm && r->is_final;
}

static void on_delivery(void *userdata, const struct kedge_delivery_report *r)
{
    struct counters *c = userdata;
    if (from_dm(r) && r->outcome == KEDGE_OUTCOME_REJECTED && c->dm_error[0] == '\0') {
        strncpy(c->dm_error, r->message, sizeof c->dm_error - 1);
        c->dm_error[sizeof c->dm_error - 1] = '\0';
    }
    switch (r->outcome) {
    case KEDGE_OUTCOME_ACKNOWLEDGED:
        c->acknowledged += r->records;
        break;
    case KEDGE_OUTCOME_QUEUED: /* the DM's queue has it: delivered, as far as this run can tell */
        c->acknowledged += r->records;
        c->queued_chunks++;
        break;
    case KEDGE_OUTCOME_REJECTED:
        if (from_dm(r) && r->result != KEDGE_DATA_REJECTED) {
            /* The DM gave up for now (a transient failure status): not the data's fault, but it is not in. */
            c->dm_transient_chunks++;
            c->dm_transient_records += r->records;
            break;
        }
        if (from_dm(r)) {
            c->dm_rejected_chunks++;
            c->dm_rejected_records += r->records;
        }
        c->rejected += r->records; /* the library logs why, at error level */
        break;
    case KEDGE_OUTCOME_DROPPED:
        c->dropped += r->records;
        break;
    case KEDGE_OUTCOME_INGESTED: /* its records were counted when it was queued */
        c->dm_ingested_chunks++;
        break;
    default:
        c->last_failure = r->result;
        break;
    }
    if (c->verbosity > 1) {
        fprintf(stderr, "%s: chunk %s: %llu records, %llu bytes raw, %llu on the wire: %s\n", PROG, r->chunk_id,
                (unsigned long long)r->records, (unsigned long long)r->raw_bytes,
                (unsigned long long)r->wire_bytes, r->message);
    }
}

/* "--name value" or "--name=value"; advances *i past what it used. Returns NULL (and complains) if missing. */
static const char *flag_value(int argc, char **argv, int *i, const char *name)
{
    const char *arg = argv[*i];
    size_t n = strlen(name);
    if (arg[n] == '=') {
        return arg + n + 1;
    }
    if (*i + 1 >= argc) {
        fprintf(stderr, "%s: %s needs a value\n", PROG, name);
        return NULL;
    }
    *i += 1;
    return argv[*i];
}

/* Whether argv[i] is the flag `name`, alone or as `name=value`. */
static int is_flag(const char *arg, const char *name)
{
    size_t n = strlen(name);
    return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

static int parse_whole(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        return -1;
    }
    *out = v;
    return 0;
}

/* Returns 0 on success, EXIT_USAGE on a bad command line, or -1 for --help. */
static int parse_args(int argc, char **argv, struct options *o)
{
    const struct {
        const char *name;
        const char **slot;
    } string_flags[] = {
        {"--url", &o->url},         {"--database", &o->database}, {"--table", &o->table},
        {"--format", &o->format},   {"--mapping", &o->mapping},   {"--token", &o->token},
        {"--ca-file", &o->ca_file}, {"--batch-bytes", &o->batch_bytes},
        {"--gzip-level", &o->gzip_level},
        {"--connection-string", &o->connection_string}, {"--tenant", &o->tenant},
        {"--client-id", &o->client_id}, {"--client-secret-file", &o->client_secret_file},
        {"--cert-file", &o->cert_file}, {"--key-file", &o->key_file},
        {"--authority-host", &o->authority_host}, {"--proxy", &o->proxy},
        {"--spool", &o->spool},     {"--spool-max-bytes", &o->spool_max_bytes},
        {"--spool-policy", &o->spool_policy}, {"--spool-key-file", &o->spool_key_file},
        {"--mode", &o->mode},       {"--dm-url", &o->dm_url},     {"--report", &o->report},
    };
    int i;
    size_t f;
    int only_files = 0;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = NULL;
        const char *name = NULL;
        if (only_files || a[0] != '-' || strcmp(a, "-") == 0) {
            o->files[o->n_files++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_files = 1;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            return -1;
        }
        if (strcmp(a, "--managed-identity") == 0 || strncmp(a, "--managed-identity=", 19) == 0) {
            o->managed_identity = 1;
            o->managed_identity_id = a[18] == '=' ? a + 19 : NULL;
            continue;
        }
        if (strcmp(a, "--drain-only") == 0) {
            o->drain_only = 1;
            continue;
        }
        if (strcmp(a, "--spool-status") == 0) {
            o->spool_status = 1;
            continue;
        }
        if (strcmp(a, "--spool-purge") == 0) {
            o->spool_purge = 1;
            continue;
        }
        if (strcmp(a, "--spool-requeue") == 0) {
            o->spool_requeue = 1;
            continue;
        }
        if (strcmp(a, "--all-tables") == 0) {
            o->all_tables = 1;
            continue;
        }
        if (is_flag(a, "--stats-interval")) {
            const char *v = flag_value(argc, argv, &i, "--stats-interval");
            if (v == NULL) {
                return EXIT_USAGE;
            }
            if (parse_whole(v, 1, 31L * 24 * 3600, &o->stats_interval) != 0) {
                fprintf(stderr, "%s: --stats-interval '%s': expected a whole number of seconds\n", PROG, v);
                return EXIT_USAGE;
            }
            continue;
        }
        if (is_flag(a, "--wait")) {
            const char *v = flag_value(argc, argv, &i, "--wait");
            if (v == NULL) {
                return EXIT_USAGE;
            }
            if (parse_whole(v, 0, 31L * 24 * 3600, &o->wait_secs) != 0) {
                fprintf(stderr, "%s: --wait '%s': expected a whole number of seconds\n", PROG, v);
                return EXIT_USAGE;
            }
            continue;
        }
        if (is_flag(a, "--durable-every")) {
            const char *v = flag_value(argc, argv, &i, "--durable-every");
            if (v == NULL) {
                return EXIT_USAGE;
            }
            if (parse_whole(v, 1, 1000000000L, &o->durable_every) != 0) {
                fprintf(stderr, "%s: --durable-every '%s': expected a number of records\n", PROG, v);
                return EXIT_USAGE;
            }
            continue;
        }
        if (strcmp(a, "--allow-http") == 0) {
            o->allow_http = 1;
            continue;
        }
        if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            o->verbosity = 0;
            continue;
        }
        if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
            o->verbosity = 2;
            continue;
        }
        if (strncmp(a, "-X", 2) == 0) {
            const char *kv = a[2] != '\0' ? a + 2 : NULL;
            if (kv == NULL) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "%s: -X needs key=value\n", PROG);
                    return EXIT_USAGE;
                }
                kv = argv[++i];
            }
            if (strchr(kv, '=') == NULL || kv[0] == '=') {
                fprintf(stderr, "%s: -X '%s': expected key=value\n", PROG, kv);
                return EXIT_USAGE;
            }
            o->x_opts[o->n_x_opts++] = kv;
            continue;
        }
        if (is_flag(a, "--give-up-secs")) {
            const char *v = flag_value(argc, argv, &i, "--give-up-secs");
            if (v == NULL) {
                return EXIT_USAGE;
            }
            if (parse_whole(v, 0, 31L * 24 * 3600, &o->give_up_secs) != 0) {
                fprintf(stderr, "%s: --give-up-secs '%s': expected a whole number of seconds\n", PROG, v);
                return EXIT_USAGE;
            }
            continue;
        }
        for (f = 0; f < sizeof string_flags / sizeof string_flags[0]; f++) {
            if (is_flag(a, string_flags[f].name)) {
                name = string_flags[f].name;
                slot = string_flags[f].slot;
                break;
            }
        }
        if (slot == NULL) {
            fprintf(stderr, "%s: unknown option '%s' (see --help)\n", PROG, a);
            return EXIT_USAGE;
        }
        *slot = flag_value(argc, argv, &i, name);
        if (*slot == NULL) {
            return EXIT_USAGE;
        }
    }
    if (o->spool_status + o->spool_purge + o->spool_requeue > 0) {
        /* Spool administration: nothing is sent, so no endpoint or credential is needed. */
        if (o->spool_status + o->spool_purge + o->spool_requeue > 1 || o->drain_only || o->n_files > 0 ||
            o->durable_every > 0) {
            fprintf(stderr, "%s: --spool-status, --spool-purge and --spool-requeue go alone: no other of them, "
                            "no --drain-only, --durable-every or FILE\n",
                    PROG);
            return EXIT_USAGE;
        }
        if (o->spool == NULL) {
            fprintf(stderr, "%s: --spool-status, --spool-purge and --spool-requeue need --spool DIR\n", PROG);
            return EXIT_USAGE;
        }
        if (!o->spool_status && o->all_tables == (o->database != NULL && o->table != NULL)) {
            fprintf(stderr, "%s: --spool-purge and --spool-requeue need --database and --table, or --all-tables "
                            "(not both)\n",
                    PROG);
            return EXIT_USAGE;
        }
        return 0;
    }
    if (o->all_tables) {
        fprintf(stderr, "%s: --all-tables goes with --spool-purge or --spool-requeue\n", PROG);
        return EXIT_USAGE;
    }
    if ((o->url == NULL && o->connection_string == NULL) || o->table == NULL ||
        (o->database == NULL && o->connection_string == NULL)) {
        fprintf(stderr, "%s: --url (or --connection-string), --database and --table are required (see --help)\n",
                PROG);
        return EXIT_USAGE;
    }
    if (o->token != NULL && o->token[0] == '\0') {
        fprintf(stderr, "%s: --token is empty: give a token, or leave the flag out\n", PROG);
        return EXIT_USAGE;
    }
    if ((o->token != NULL) + (o->client_id != NULL) + (o->managed_identity != 0) > 1 ||
        (o->client_secret_file != NULL && o->cert_file != NULL)) {
        fprintf(stderr,
                "%s: conflicting credentials: give one of --token, --client-id with --client-secret-file or "
                "--cert-file, or --managed-identity\n",
                PROG);
        return EXIT_USAGE;
    }
    if ((o->drain_only || o->durable_every > 0) && o->spool == NULL) {
        fprintf(stderr, "%s: --drain-only and --durable-every need --spool DIR\n", PROG);
        return EXIT_USAGE;
    }
    if (o->drain_only && o->n_files > 0) {
        fprintf(stderr, "%s: --drain-only reads no input: drop the FILE arguments\n", PROG);
        return EXIT_USAGE;
    }
    return 0;
}

/* Sets one key; on failure prints the library's message (which never shows a token). */
static int set_key(kedge_config *config, const char *key, const char *value)
{
    char err[512];
    kedge_result r = kedge_config_set(config, key, value, err, sizeof err);
    if (r != KEDGE_OK) {
        fprintf(stderr, "%s: %s (%s)\n", PROG, err, kedge_result_str(r));
        return -1;
    }
    return 0;
}

/*
 * Builds the configuration in the order: our defaults, the flags, then -X in command-line order (so -X can
 * override anything). *batch_bytes receives the batch size the client will use, for the line buffer.
 */
static int build_config(const struct options *o, struct counters *counts, kedge_config *config,
                        unsigned long *batch_bytes)
{
    size_t k;
    /* The environment's token is the default credential only when no other credential is given. */
    int other_credential = o->connection_string != NULL || o->client_id != NULL || o->managed_identity;
    const char *token = o->token != NULL ? o->token : (other_credential ? NULL : getenv("KEDGE_TOKEN"));
    if (set_key(config, "log.level", o->verbosity > 1 ? "debug" : "error") != 0 ||
        set_key(config, "client.app", "kedge-send") != 0 || set_key(config, "destinations.max", "1") != 0) {
        return -1;
    }
    /* One thread reads and sends in turn, so a second batch buffer would only cost memory: a full batch waits in
     * its one buffer for the poll that sends it (-X batch.sealed=1 restores double buffering). */
    if (set_key(config, "batch.sealed", "0") != 0) {
        return -1;
    }
    if (o->connection_string != NULL && set_key(config, "connection_string", o->connection_string) != 0) {
        return -1;
    }
    /* Spool administration never contacts the service: any syntactically valid URL will do. */
    if (o->url == NULL && o->connection_string == NULL && (o->spool_status || o->spool_purge || o->spool_requeue) &&
        set_key(config, "url", "https://spool-admin.invalid") != 0) {
        return -1;
    }
    if (o->url != NULL && set_key(config, "url", o->url) != 0) {
        return -1;
    }
    {
        const struct {
            const char *key;
            const char *value;
        } creds[] = {
            {"auth.tenant", o->tenant},
            {"auth.client_id", o->managed_identity ? o->managed_identity_id : o->client_id},
            {"auth.client_secret_file", o->client_secret_file},
            {"auth.cert_file", o->cert_file},
            {"auth.key_file", o->key_file},
            {"auth.authority_host", o->authority_host},
            {"proxy.url", o->proxy},
            {"auth.method", o->managed_identity ? "managed_identity" : NULL},
        };
        size_t c;
        for (c = 0; c < sizeof creds / sizeof creds[0]; c++) {
            if (creds[c].value != NULL && set_key(config, creds[c].key, creds[c].value) != 0) {
                return -1;
            }
        }
    }
    if (o->allow_http && set_key(config, "http.allow_plain", "true") != 0) {
        return -1;
    }
    if (o->ca_file != NULL && set_key(config, "tls.ca_file", o->ca_file) != 0) {
        return -1;
    }
    if (token != NULL && token[0] != '\0' && set_key(config, "auth.token", token) != 0) {
        return -1;
    }
    if (o->spool != NULL && set_key(config, "spool.dir", o->spool) != 0) {
        return -1;
    }
    if (o->spool_max_bytes != NULL && set_key(config, "spool.max_bytes", o->spool_max_bytes) != 0) {
        return -1;
    }
    if (o->spool_policy != NULL && set_key(config, "spool.policy", o->spool_policy) != 0) {
        return -1;
    }
    if (o->spool_key_file != NULL && set_key(config, "spool.key_file", o->spool_key_file) != 0) {
        return -1;
    }
    if (o->mode != NULL && set_key(config, "ingest.mode", o->mode) != 0) {
        return -1;
    }
    if (o->dm_url != NULL && set_key(config, "ingest.dm_url", o->dm_url) != 0) {
        return -1;
    }
    if (o->report != NULL && set_key(config, "queued.report", o->report) != 0) {
        return -1;
    }
    {
        /* --give-up-secs bounds the run: one flush is bounded by retry.max_total_ms plus one request's timeouts,
         * so neither may be longer than half of it (the library's defaults are 30 s each; -X still overrides). */
        long long half_ms = (long long)o->give_up_secs * 500;
        char v[32];
        if (half_ms < 100) {
            half_ms = 100;
        }
        if (half_ms < 30000) {
            snprintf(v, sizeof v, "%lld", half_ms);
            if (set_key(config, "retry.max_total_ms", v) != 0 || set_key(config, "timeout.send_ms", v) != 0 ||
                set_key(config, "timeout.recv_ms", v) != 0) {
                return -1;
            }
        }
        if (half_ms < 10000) {
            snprintf(v, sizeof v, "%lld", half_ms);
            if (set_key(config, "timeout.connect_ms", v) != 0) {
                return -1;
            }
        }
    }
    if (o->batch_bytes != NULL) {
        if (set_key(config, "batch.bytes", o->batch_bytes) != 0) {
            return -1;
        }
        *batch_bytes = strtoul(o->batch_bytes, NULL, 10); /* the library checked it: 1024..4194304 */
    }
    if (o->gzip_level != NULL && set_key(config, "gzip.level", o->gzip_level) != 0) {
        return -1; /* the library checks it: 1..9 */
    }
    for (k = 0; k < o->n_x_opts; k++) {
        char key[MAX_KEY_LEN];
        const char *eq = strchr(o->x_opts[k], '=');
        size_t key_len = (size_t)(eq - o->x_opts[k]);
        if (key_len >= sizeof key) {
            fprintf(stderr, "%s: -X: key '%.*s...' is too long\n", PROG, 32, o->x_opts[k]);
            return -1;
        }
        memcpy(key, o->x_opts[k], key_len);
        key[key_len] = '\0';
        if (set_key(config, key, eq + 1) != 0) {
            return -1;
        }
        if (strcmp(key, "batch.bytes") == 0) {
            *batch_bytes = strtoul(eq + 1, NULL, 10);
        }
    }
    if (kedge_config_set_delivery_callback(config, on_delivery, counts) != KEDGE_OK) {
        return -1;
    }
    if (o->verbosity > 0 && kedge_config_set_log_callback(config, on_log, counts) != KEDGE_OK) {
        return -1;
    }
    return 0;
}

/* Whether records of this format are CSV records (RFC 4180 quoting), which may span lines. */
static int is_csv_like(const char *format)
{
    static const char *const csv_like[] = {"csv", "psv", "scsv", "sohsv"};
    size_t i;
    for (i = 0; i < sizeof csv_like / sizeof csv_like[0]; i++) {
        const char *a = format;
        const char *b = csv_like[i];
        while (*a != '\0' && *b != '\0' && (*a | 0x20) == *b) {
            a++;
            b++;
        }
        if (*a == '\0' && *b == '\0') {
            return 1;
        }
    }
    return 0;
}

/* The newline that ends the record in p[0..n), or NULL. For CSV, a newline inside quotes does not: a doubled
 * quote ("") toggles twice, so it needs no special case. The quote state carries over between calls. */
static const char *record_end(struct reader *rd, const char *p, size_t n)
{
    size_t i;
    if (!rd->csv) {
        return memchr(p, '\n', n);
    }
    for (i = 0; i < n; i++) {
        if (p[i] == '"') {
            rd->in_quotes = !rd->in_quotes;
        } else if (p[i] == '\n') {
            if (!rd->in_quotes) {
                return p + i;
            }
            rd->line_no += 1; /* a line inside the record */
        }
    }
    return NULL;
}

/*
 * Reads the next line into line[0..cap) without its '\n'. Returns 1 for a line (*overlong set when it had more
 * than cap bytes: the rest was skipped), 0 at the end of the input, -1 on a read error.
 */
static int read_line(struct reader *rd, char *line, size_t cap, size_t *len, int *overlong)
{
    int got = 0;
    unsigned long first_line = rd->line_no + 1;
    *len = 0;
    *overlong = 0;
    rd->in_quotes = 0;
    for (;;) {
        const char *start;
        const char *nl;
        size_t take;
        if (rd->chunk_pos == rd->chunk_len) {
            if (rd->eof) {
                break;
            }
            ssize_t n;
            struct pollfd pfd;
            uint32_t next_ms = MAX_SLEEP_MS;
            if (stop_signal) {
                rd->eof = 1;
                rd->interrupted = 1;
                break;
            }
            pfd.fd = rd->fd;
            pfd.events = POLLIN;
            pfd.revents = 0;
            tick();
            if (rd->client != NULL) {
                /* Idle input: the batches still age, and old ones go out now. Failures keep the data; they
                 * surface on the next append or flush. */
                (void)poll_client(rd->client, &next_ms);
            }
            {
                int ready = poll(&pfd, 1, (int)(next_ms > MAX_SLEEP_MS ? MAX_SLEEP_MS : next_ms));
                if (ready < 0 && errno != EINTR) {
                    return -1;
                }
                if (ready <= 0) {
                    continue; /* timeout or a signal: poll the client, look at the stop flag */
                }
            }
            n = read(rd->fd, rd->chunk, READ_CHUNK_BYTES);
            if (n < 0) {
                if (errno == EINTR || errno == EAGAIN) {
                    continue;
                }
                return -1;
            }
            rd->chunk_len = (size_t)n;
            rd->chunk_pos = 0;
            if (rd->chunk_len == 0) {
                rd->eof = 1;
                break;
            }
        }
        got = 1;
        start = rd->chunk + rd->chunk_pos;
        nl = record_end(rd, start, rd->chunk_len - rd->chunk_pos);
        take = nl != NULL ? (size_t)(nl - start) : rd->chunk_len - rd->chunk_pos;
        if (!*overlong) {
            if (take > cap - *len) {
                *overlong = 1;
            } else {
                memcpy(line + *len, start, take);
                *len += take;
            }
        }
        rd->chunk_pos += take;
        if (nl != NULL) {
            rd->chunk_pos += 1;
            break;
        }
    }
    if (!got || rd->interrupted) {
        /* A record cut short by a stop signal was not taken: the summary says where the input resumes. */
        rd->line_no = first_line - 1;
        return 0;
    }
    rd->line_no += 1;
    rd->record_line = first_line;
    return 1;
}

static void print_client_error(const struct run *run, const char *what, kedge_result r)
{
    char msg[1024];
    if (kedge_client_last_error(run->client, msg, sizeof msg, NULL) != KEDGE_OK) {
        msg[0] = '\0';
    }
    fprintf(stderr, "%s: %s: %s: %s\n", PROG, what, kedge_result_str(r), msg);
}

/* Acknowledgements since the last look count as progress: the give-up clock starts again. */
static void note_progress(struct run *run)
{
    if (run->counts->acknowledged != run->acknowledged_seen) {
        run->acknowledged_seen = run->counts->acknowledged;
        run->failing = 0;
    }
}

enum wait_result { WAIT_AGAIN, WAIT_NOTHING_LEFT, WAIT_GAVE_UP, WAIT_FATAL };

/*
 * After a keep-the-data result: polls and sleeps (at most MAX_SLEEP_MS at a time) until the library's backoff
 * for the destination has run out, so that the next try honours it (and the server's Retry-After). Gives up when
 * --give-up-secs have passed since the first failure without progress.
 */
static enum wait_result wait_for_service(struct run *run, kedge_result r)
{
    if (r != KEDGE_BACKING_OFF && r != KEDGE_SPOOLED) {
        run->cause = r;
    }
    note_progress(run);
    if (!run->failing) {
        run->failing = 1;
        run->first_failure_ms = now_ms();
    }
    for (;;) {
        uint32_t next_ms = 0;
        kedge_stats st;
        /* A stop signal ends the wait at once: what is taken goes to the spool, or is counted as lost. */
        if (stop_signal || now_ms() - run->first_failure_ms >= run->give_up_ms) {
            return WAIT_GAVE_UP;
        }
        r = poll_client(run->client, &next_ms);
        tick();
        if (r != KEDGE_OK) {
            if (keeps_data(r)) {
                if (r != KEDGE_BACKING_OFF && r != KEDGE_SPOOLED) {
                    run->cause = r;
                }
            } else if (r != KEDGE_DATA_REJECTED) {
                print_client_error(run, "poll", r);
                return WAIT_FATAL;
            }
            next_ms = next_ms == 0 ? 1 : next_ms; /* failed poll: no fresh estimate; avoid a hot loop */
        }
        note_progress(run);
        if (kedge_client_stats(run->client, &st, sizeof st) != KEDGE_OK) {
            return WAIT_FATAL;
        }
        if (all_sent(&st)) {
            return WAIT_NOTHING_LEFT;
        }
        if (next_ms <= MAX_SLEEP_MS) {
            sleep_ms(next_ms);
            return WAIT_AGAIN;
        }
        sleep_ms(MAX_SLEEP_MS);
    }
}

enum send_status { SEND_OK, SEND_GAVE_UP, SEND_FATAL };

/* Offers one record until it is taken, found invalid, or we give up. kedge_append only ever says taken, invalid,
 * or KEDGE_QUEUE_FULL (the destination's chunks wait for kedge_poll): then poll sends them, and when the lane is
 * still full after that (the service is in trouble), wait for it as the library's backoff says. */
static enum send_status send_record(struct run *run, const struct reader *rd, const char *rec, size_t len,
                                    unsigned long long *invalid)
{
    int polled = 0;
    kedge_result last_poll = KEDGE_OK;
    /* The lane was full a moment ago (kedge_append_lines said so): poll first, rather than append only to hear it
     * again, which the client would count as a second full-lane refusal (stats appends_queue_full). */
    int full = run->lane_full;
    run->lane_full = 0;
    for (;;) {
        kedge_result r = KEDGE_QUEUE_FULL;
        if (!full) {
            r = kedge_append(run->client, run->dest, (const uint8_t *)rec, len);
            tick();
        }
        full = 0;
        if (r == KEDGE_OK) {
            kedge_stats st;
            run->failing = 0;
            if (sender_ran) {
                sender_ran = 0;
                if (kedge_client_stats(run->client, &st, sizeof st) == KEDGE_OK && st.records_buffered == 1) {
                    run->batch_file = rd->name;
                    run->batch_line = rd->record_line;
                }
            }
            return SEND_OK;
        }
        if (r == KEDGE_RECORD_TOO_LARGE || r == KEDGE_INVALID_RECORD) {
            char msg[512];
            if (kedge_client_last_error(run->client, msg, sizeof msg, NULL) != KEDGE_OK) {
                msg[0] = '\0';
            }
            if (run->counts->verbosity > 0) {
                fprintf(stderr, "%s: %s:%lu: %s: %s\n", PROG, rd->name, rd->record_line, kedge_result_str(r), msg);
            }
            *invalid += 1;
            return SEND_OK;
        }
        if (r != KEDGE_QUEUE_FULL) {
            print_client_error(run, "append", r);
            return SEND_FATAL;
        }
        if (!polled) {
            uint32_t next_ms = 0;
            last_poll = poll_client(run->client, &next_ms);
            tick();
            if (last_poll != KEDGE_OK && !keeps_data(last_poll) && last_poll != KEDGE_DATA_REJECTED) {
                print_client_error(run, "poll", last_poll);
                return SEND_FATAL;
            }
            polled = 1;
            continue;
        }
        polled = 0;
        switch (wait_for_service(run, last_poll == KEDGE_OK ? KEDGE_BACKING_OFF : last_poll)) {
        case WAIT_AGAIN:
        case WAIT_NOTHING_LEFT:
            break;
        case WAIT_GAVE_UP:
            return SEND_GAVE_UP;
        case WAIT_FATAL:
            return SEND_FATAL;
        }
    }
}

/* Sends everything still buffered, waiting out failures until we give up. */
static enum send_status flush_all(struct run *run)
{
    int rejected_in_a_row = 0;
    for (;;) {
        kedge_stats st;
        kedge_result r = flush_client(run->client);
        if (r == KEDGE_OK) {
            return SEND_OK;
        }
        if (r == KEDGE_DATA_REJECTED) {
            if (kedge_client_stats(run->client, &st, sizeof st) != KEDGE_OK) {
                return SEND_FATAL;
            }
            if (all_sent(&st)) {
                return SEND_OK; /* the refused chunk was counted by the delivery callback */
            }
            if (++rejected_in_a_row > 3) {
                print_client_error(run, "flush", r);
                return SEND_FATAL;
            }
            continue;
        }
        if (!keeps_data(r)) {
            print_client_error(run, "flush", r);
            return SEND_FATAL;
        }
        switch (wait_for_service(run, r)) {
        case WAIT_AGAIN:
            break;
        case WAIT_NOTHING_LEFT:
            return SEND_OK;
        case WAIT_GAVE_UP:
            return SEND_GAVE_UP;
        case WAIT_FATAL:
            return SEND_FATAL;
        }
    }
}

/*
 * --durable-every: makes everything taken so far acknowledged or on flash, then says so ("durable N") for a caller
 * that checkpoints. A poll first sends what is due and replays some of the spool, so that checkpoints smaller
 * than a batch do not leave everything on flash; a full spool (reject-new) is waited out like any keep-the-data
 * result, the replay making room, until --give-up-secs pass without progress.
 */
static enum send_status checkpoint(struct run *run)
{
    for (;;) {
        uint32_t next_ms = 0;
        kedge_result r = poll_client(run->client, &next_ms);
        if (r != KEDGE_OK && !keeps_data(r) && r != KEDGE_DATA_REJECTED) {
            print_client_error(run, "poll", r);
            return SEND_FATAL;
        }
        r = flush_client_to_spool(run->client);
        if (r == KEDGE_OK) {
            break;
        }
        if (!keeps_data(r)) {
            print_client_error(run, "flush to spool", r);
            return SEND_FATAL;
        }
        switch (wait_for_service(run, r)) {
        case WAIT_AGAIN:
        case WAIT_NOTHING_LEFT:
            continue;
        case WAIT_GAVE_UP:
            print_client_error(run, "flush to spool", r);
            return SEND_GAVE_UP;
        case WAIT_FATAL:
            return SEND_FATAL;
        }
    }
    note_progress(run);
    printf("durable %llu\n", run->taken);
    fflush(stdout);
    return SEND_OK;
}

/*
 * Hands the whole lines already read to kedge_append_lines, which takes them with one lane lock per group and no
 * copy but into the batch. What it does not take is left in the reader for read_line and send_record, which
 * then do the rest one record at a time as before: a line cut by the end of the read, a record refused (they
 * report and count it), a full lane (they poll and wait), and the first record after a send or a spool (they
 * note where the batch in RAM began). Stops at the next --durable-every checkpoint; a stop signal leaves the
 * rest to read_line too.
 */
static enum send_status send_buffered(struct run *run, struct reader *rd)
{
    kedge_lines_taken taken;
    kedge_result r;
    uint64_t max = UINT64_MAX;
    if (run->lines_off || sender_ran || stop_signal || rd->chunk_pos == rd->chunk_len) {
        return SEND_OK;
    }
    if (run->durable_every > 0) {
        max = (uint64_t)run->durable_every - (uint64_t)(run->taken % (unsigned long long)run->durable_every);
    }
    r = kedge_append_lines(run->client, run->dest, (const uint8_t *)rd->chunk + rd->chunk_pos,
                           rd->chunk_len - rd->chunk_pos, max, &taken);
    tick();
    rd->chunk_pos += taken.consumed_len;
    rd->line_no += (unsigned long)taken.lines;
    run->taken += taken.records;
    if (taken.records > 0) {
        run->failing = 0;
    }
    run->lane_full = r == KEDGE_QUEUE_FULL;
    if (r != KEDGE_OK && r != KEDGE_QUEUE_FULL && r != KEDGE_INVALID_RECORD && r != KEDGE_RECORD_TOO_LARGE) {
        run->lines_off = 1; /* e.g. a format of whole documents: kedge_append says what is wrong, if anything */
    }
    if (taken.records > 0 && run->durable_every > 0 &&
        run->taken % (unsigned long long)run->durable_every == 0) {
        return checkpoint(run);
    }
    return SEND_OK;
}

/* Streams one input. Returns SEND_OK at its end, or why it stopped; *io_error is set on a read error. */
static enum send_status send_input(struct run *run, struct reader *rd, char *line, size_t cap,
                                   unsigned long long *invalid, int *io_error)
{
    for (;;) {
        size_t len = 0;
        int overlong = 0;
        enum send_status s = send_buffered(run, rd);
        int got;
        if (s != SEND_OK) {
            return s;
        }
        got = read_line(rd, line, cap, &len, &overlong);
        if (got < 0) {
            fprintf(stderr, "%s: %s: read error: %s\n", PROG, rd->name, strerror(errno));
            *io_error = 1;
            return SEND_OK;
        }
        if (got == 0) {
            return SEND_OK;
        }
        if (overlong) {
            if (run->counts->verbosity > 0) {
                fprintf(stderr, "%s: %s:%lu: record longer than batch.bytes (%lu bytes): skipped\n", PROG,
                        rd->name, rd->record_line, (unsigned long)cap);
            }
            *invalid += 1;
            continue;
        }
        if (len > 0 && line[len - 1] == '\r') {
            len--;
        }
        if (len == 0) {
            continue;
        }
        s = send_record(run, rd, line, len, invalid);
        if (s != SEND_OK) {
            return s;
        }
        run->taken++;
        if (run->durable_every > 0 && run->taken % (unsigned long long)run->durable_every == 0) {
            s = checkpoint(run);
            if (s != SEND_OK) {
                return s;
            }
        }
    }
}

/* The queued.report in effect: --report, then any -X queued.report=... after it (the library's default is failures). */
static const char *report_level(const struct options *o)
{
    const char *level = o->report != NULL ? o->report : "failures";
    size_t k;
    for (k = 0; k < o->n_x_opts; k++) {
        if (strncmp(o->x_opts[k], "queued.report=", 14) == 0) {
            level = o->x_opts[k] + 14;
        }
    }
    return level;
}

/* DM reports still to come for the chunks queued in this run (the tool cannot tell which will never come). */
static unsigned long long unsettled(const struct counters *c)
{
    unsigned long long settled = c->dm_ingested_chunks + c->dm_rejected_chunks + c->dm_transient_chunks;
    return c->queued_chunks > settled ? c->queued_chunks - settled : 0;
}

/*
 * --wait: polls (which reads the DM's notification queues) until every chunk queued in this run has its final
 * report, a stop signal, or `secs` have passed. With --report failures, a chunk that went in gets no report, so
 * only an all-failed run ends early; with none, nothing comes, so there is nothing to wait for.
 */
static void wait_for_reports(kedge_client *client, const struct counters *c, long secs, const char *level)
{
    long long deadline = now_ms() + (long long)secs * 1000;
    if (strcmp(level, "none") == 0) {
        return;
    }
    while (unsettled(c) > 0 && !stop_signal) {
        uint32_t next_ms = MAX_SLEEP_MS;
        long long left = deadline - now_ms();
        if (left <= 0) {
            break;
        }
        (void)poll_client(client, &next_ms); /* failures here are the DM's reports' own, in the callback */
        tick();
        if (unsettled(c) == 0) {
            break;
        }
        if (next_ms > MAX_SLEEP_MS) {
            next_ms = MAX_SLEEP_MS;
        }
        if ((long long)next_ms > left) {
            next_ms = (uint32_t)left;
        }
        sleep_ms(next_ms == 0 ? 1 : next_ms);
    }
}

static int exit_for_give_up(const struct run *run)
{
    kedge_result cause = run->cause;
    if (cause == KEDGE_OK) {
        cause = run->counts->last_failure;
    }
    if (cause == KEDGE_AUTH_REFUSED) {
        return EXIT_NOPERM;
    }
    return cause == KEDGE_SPOOL_IO ? EXIT_OTHER : EXIT_UNAVAILABLE;
}

static void print_spool_destination(void *userdata, const kedge_spool_destination *d)
{
    long long age_s = (now_wall_ms() - (long long)d->oldest_unix_ms) / 1000;
    (void)userdata;
    printf("  %s.%s %s%s%s %s: %u chunks, %llu records, %llu bytes, oldest %lld s old\n", d->database, d->table,
           d->format, d->mapping != NULL ? " mapping=" : "", d->mapping != NULL ? d->mapping : "",
           d->sink == 2 ? "queued" : "streaming", d->chunks, (unsigned long long)d->records,
           (unsigned long long)d->bytes, age_s < 0 ? 0 : age_s);
}

/* --spool-status, --spool-purge, --spool-requeue: one operation on the spool, nothing sent. Returns the exit
 * status. */
static int spool_admin(const struct options *o, struct run *run)
{
    const char *db = o->all_tables ? NULL : o->database;
    const char *table = o->all_tables ? NULL : o->table;
    const char *which = o->all_tables ? "every table" : NULL;
    char name[512];
    kedge_result r;
    if (which == NULL) {
        snprintf(name, sizeof name, "%s.%s", o->database != NULL ? o->database : "", o->table != NULL ? o->table : "");
        which = name;
    }
    if (o->spool_status) {
        kedge_spool_status st;
        printf("spool %s:\n", o->spool);
        r = kedge_client_spool_status(run->client, &st, sizeof st, print_spool_destination, NULL);
        if (r != KEDGE_OK) {
            print_client_error(run, "spool status", r);
            return EXIT_OTHER;
        }
        printf("pending %llu chunks (%llu records, %llu bytes) for %llu destinations; rejected %llu chunks (%llu "
               "bytes); corrupt %llu (%llu bytes); locked (another key) %llu (%llu bytes); newer firmware's %llu "
               "(%llu bytes)\n",
               (unsigned long long)st.pending_chunks, (unsigned long long)st.pending_records,
               (unsigned long long)st.pending_bytes, (unsigned long long)st.destinations,
               (unsigned long long)st.rejected_chunks, (unsigned long long)st.rejected_bytes,
               (unsigned long long)st.corrupt_chunks, (unsigned long long)st.corrupt_bytes,
               (unsigned long long)st.locked_chunks, (unsigned long long)st.locked_bytes,
               (unsigned long long)st.newer_chunks, (unsigned long long)st.newer_bytes);
        return EXIT_ALL_ACKNOWLEDGED;
    }
    if (o->spool_purge) {
        uint64_t n = 0;
        r = kedge_client_spool_purge(run->client, db, table, KEDGE_SPOOL_ALL, &n);
        if (r != KEDGE_OK) {
            print_client_error(run, "spool purge", r);
            return r == KEDGE_INVALID_ARGUMENT ? EXIT_USAGE : EXIT_OTHER;
        }
        printf("purged %llu spooled chunks of %s (pending and quarantined)\n", (unsigned long long)n, which);
        return EXIT_ALL_ACKNOWLEDGED;
    }
    {
        uint64_t n = 0;
        uint64_t left = 0;
        r = kedge_client_spool_requeue(run->client, db, table, &n, &left);
        if (r != KEDGE_OK) {
            print_client_error(run, "spool requeue", r);
            return r == KEDGE_INVALID_ARGUMENT ? EXIT_USAGE : EXIT_OTHER;
        }
        printf("requeued %llu rejected chunks of %s; %llu left in rejected/ (spool full); send them with "
               "--drain-only\n",
               (unsigned long long)n, which, (unsigned long long)left);
        return EXIT_ALL_ACKNOWLEDGED;
    }
}

int main(int argc, char **argv)
{
    struct options o;
    struct counters counts;
    struct run run;
    struct reader rd;
    kedge_config *config = NULL;
    kedge_client *client = NULL;
    char *line = NULL;
    char *chunk = NULL;
    unsigned long batch_bytes = DEFAULT_BATCH_BYTES;
    unsigned long long invalid = 0;
    int io_error = 0;
    int interrupted = 0;
    int stopped_safe = 0; /* stopped by a signal with every record taken acknowledged or on flash */
    int status = EXIT_OTHER;
    enum send_status sent = SEND_OK;
    char err[512];
    kedge_result r;
    size_t f;
    int parsed;

    memset(&o, 0, sizeof o);
    memset(&counts, 0, sizeof counts);
    memset(&run, 0, sizeof run);
    memset(&rd, 0, sizeof rd);
    o.format = "multijson";
    o.give_up_secs = 60;
    o.verbosity = 1;

    /* argc bounds both lists, so two small arrays sized once cover any command line. */
    o.x_opts = malloc(sizeof *o.x_opts * (size_t)argc);
    o.files = malloc(sizeof *o.files * (size_t)argc);
    if (o.x_opts == NULL || o.files == NULL) {
        fprintf(stderr, "%s: out of memory\n", PROG);
        goto out;
    }
    parsed = parse_args(argc, argv, &o);
    if (parsed < 0) {
        usage(stdout);
        status = EXIT_ALL_ACKNOWLEDGED;
        goto out;
    }
    if (parsed != 0) {
        status = parsed;
        goto out;
    }
    counts.verbosity = o.verbosity;

    /* Unreadable inputs are a usage error, found before anything is sent. Checked without opening them: opening
     * a FIFO would block until a writer comes, and reading to check would consume its data. */
    for (f = 0; f < o.n_files; f++) {
        struct stat sb;
        if (strcmp(o.files[f], "-") == 0) {
            continue;
        }
        if (stat(o.files[f], &sb) != 0 || access(o.files[f], R_OK) != 0) {
            fprintf(stderr, "%s: %s: %s\n", PROG, o.files[f], strerror(errno));
            status = EXIT_USAGE;
            goto out;
        }
        if (S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "%s: %s: is a directory, not an input file\n", PROG, o.files[f]);
            status = EXIT_USAGE;
            goto out;
        }
    }
    if (o.spool != NULL) {
        struct stat sb;
        if (stat(o.spool, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
            fprintf(stderr, "%s: --spool %s: not a directory\n", PROG, o.spool);
            status = EXIT_USAGE;
            goto out;
        }
    }

    /* A file size limit (ulimit -f) must be a spool I/O error the library reports, not a silent kill. */
    signal(SIGXFSZ, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    {
        /* No SA_RESTART: a stop signal interrupts the wait for input at once. */
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_stop_signal;
        sa.sa_flags = SA_RESETHAND; /* a second signal is not caught: it stops the program the default way */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
    }

    status = EXIT_USAGE;
    if (kedge_config_new(&config) != KEDGE_OK) {
        status = EXIT_OTHER;
        goto out;
    }
    if (build_config(&o, &counts, config, &batch_bytes) != 0) {
        goto out;
    }
    r = kedge_client_new(config, &client, err, sizeof err);
    if (r != KEDGE_OK) {
        fprintf(stderr, "%s: %s (%s)\n", PROG, err, kedge_result_str(r));
        status = (r == KEDGE_INTERNAL || r == KEDGE_PANIC) ? EXIT_OTHER : EXIT_USAGE;
        goto out;
    }
    run.client = client;
    run.counts = &counts;
    if (o.spool_status || o.spool_purge || o.spool_requeue) {
        status = spool_admin(&o, &run);
        goto out;
    }
    ticker.client = client;
    ticker.tty = o.verbosity > 0 && isatty(STDERR_FILENO);
    ticker.stats_interval_ms = (long long)o.stats_interval * 1000;
    ticker.started_ms = now_ms();
    ticker.last_progress_ms = ticker.started_ms;
    ticker.last_stats_ms = ticker.started_ms;
    run.give_up_ms = (long long)o.give_up_secs * 1000;
    run.durable_every = o.durable_every;
    /* An empty database name takes the connection string's Initial Catalog. */
    r = kedge_client_add_destination(client, o.database != NULL ? o.database : "", o.table, o.format, o.mapping,
                                     &run.dest);
    if (r != KEDGE_OK) {
        print_client_error(&run, "destination", r);
        status = r == KEDGE_INVALID_ARGUMENT ? EXIT_USAGE : EXIT_OTHER;
        goto out;
    }

    /* The only buffers that hold input: both sized now, never grown. */
    line = malloc(batch_bytes);
    chunk = malloc(READ_CHUNK_BYTES);
    if (line == NULL || chunk == NULL) {
        fprintf(stderr, "%s: out of memory for a %lu-byte line buffer\n", PROG, batch_bytes);
        status = EXIT_OTHER;
        goto out;
    }

    /* The spool's backlog goes first: one pass now; what fails is retried by the polls while input flows. */
    if (o.spool != NULL) {
        kedge_stats st;
        if (kedge_client_stats(client, &st, sizeof st) == KEDGE_OK && st.spool_chunks > 0 && o.verbosity > 1) {
            fprintf(stderr, "%s: replaying %llu spooled chunks first\n", PROG, (unsigned long long)st.spool_chunks);
        }
        if (o.drain_only) {
            sent = flush_all(&run);
        } else {
            (void)flush_client(client);
        }
    }

    for (f = 0; f < (o.n_files == 0 ? 1 : o.n_files) && sent == SEND_OK && !o.drain_only; f++) {
        int is_stdin = o.n_files == 0 || strcmp(o.files[f], "-") == 0;
        memset(&rd, 0, sizeof rd);
        rd.chunk = chunk;
        rd.csv = is_csv_like(o.format);
        rd.name = is_stdin ? "<stdin>" : o.files[f];
        rd.client = client;
        rd.fd = is_stdin ? STDIN_FILENO : open(o.files[f], O_RDONLY | O_CLOEXEC);
        if (rd.fd < 0) {
            fprintf(stderr, "%s: %s: %s\n", PROG, o.files[f], strerror(errno));
            io_error = 1;
            break;
        }
        sent = send_input(&run, &rd, line, batch_bytes, &invalid, &io_error);
        if (!is_stdin) {
            close(rd.fd);
        }
        if (rd.interrupted) {
            interrupted = 1;
            fprintf(stderr, "%s: stopped by signal %d after %s line %lu: input resumes at line %lu\n", PROG,
                    (int)stop_signal, rd.name, rd.line_no, rd.line_no + 1);
            break;
        }
        if (io_error) {
            break;
        }
    }
    if (sent == SEND_OK && interrupted && o.spool != NULL) {
        /* Stopping (an init system allows seconds, not minutes): one bounded try, then the rest to flash. */
        kedge_stats st;
        (void)flush_client(client);
        r = flush_client_to_spool(client);
        if (r != KEDGE_OK) {
            print_client_error(&run, "flush to spool", r);
        }
        if (kedge_client_stats(client, &st, sizeof st) == KEDGE_OK && st.records_buffered == 0) {
            stopped_safe = 1;
        }
    } else if (sent == SEND_OK) {
        sent = flush_all(&run);
    }
    if (sent == SEND_OK && !interrupted && o.wait_secs > 0 && counts.queued_chunks > 0) {
        wait_for_reports(client, &counts, o.wait_secs, report_level(&o));
    }

    end_progress();
    if (o.stats_interval > 0) {
        kedge_stats st;
        if (kedge_client_stats(client, &st, sizeof st) == KEDGE_OK) {
            print_stats_json(&st);
        }
    }
    if (o.verbosity > 0) {
        kedge_stats st;
        if (kedge_client_stats(client, &st, sizeof st) == KEDGE_OK) {
            fprintf(stderr,
                    "%s: %llu records (%llu acknowledged, %llu rejected), %.1f MB raw, %.1f MB on the wire, "
                    "%llu requests, %llu retries",
                    PROG, (unsigned long long)st.records_appended, counts.acknowledged, counts.rejected,
                    (double)st.bytes_sent_raw / 1e6, (double)st.bytes_sent_wire / 1e6,
                    (unsigned long long)st.requests, (unsigned long long)st.retries);
            if (counts.queued_chunks > 0) {
                fprintf(stderr, ", %llu chunks queued (the DM reported %llu ingested, %llu failed)",
                        counts.queued_chunks, counts.dm_ingested_chunks,
                        counts.dm_rejected_chunks + counts.dm_transient_chunks);
            }
            if (invalid > 0) {
                fprintf(stderr, ", %llu invalid input lines", invalid);
            }
            if (st.chunks_corrupt > 0 || st.chunks_locked > 0 || st.spool_io_errors > 0) {
                fprintf(stderr,
                        ", %llu corrupt spool chunks quarantined in corrupt/, %llu spool chunks locked (another "
                        "key), %llu spool I/O errors",
                        (unsigned long long)st.chunks_corrupt, (unsigned long long)st.chunks_locked,
                        (unsigned long long)st.spool_io_errors);
            }
            if (st.spool_chunks > 0 || counts.dropped > 0) {
                fprintf(stderr, ", %llu chunks left in the spool, %llu records dropped by the full spool",
                        (unsigned long long)st.spool_chunks, counts.dropped);
            }
            fputc('\n', stderr);
        }
    }

    if (sent == SEND_FATAL) {
        status = EXIT_OTHER;
    } else if (stopped_safe) {
        kedge_stats st;
        memset(&st, 0, sizeof st);
        if (kedge_client_stats(client, &st, sizeof st) == KEDGE_OK && all_sent(&st) && counts.dropped == 0 &&
            counts.rejected == 0 && invalid == 0) {
            status = EXIT_ALL_ACKNOWLEDGED;
        } else if (counts.dropped == 0) {
            fprintf(stderr, "%s: %llu chunks are safe in the spool %s: run again to deliver them\n", PROG,
                    (unsigned long long)st.spool_chunks, o.spool);
            status = EXIT_TEMPFAIL;
        } else {
            status = EXIT_UNAVAILABLE;
        }
    } else if (sent == SEND_GAVE_UP) {
        char msg[1024];
        kedge_stats st;
        if (kedge_client_last_error(client, msg, sizeof msg, NULL) != KEDGE_OK) {
            msg[0] = '\0';
        }
        if (stop_signal) {
            fprintf(stderr, "%s: stopped by signal %d while the service was failing: %s\n", PROG, (int)stop_signal,
                    msg);
        } else {
            fprintf(stderr, "%s: gave up after %ld s without progress: %s\n", PROG, o.give_up_secs, msg);
        }
        status = exit_for_give_up(&run);
        /* With a spool, what is not delivered is put on flash: a later run (--drain-only) delivers it. */
        if (o.spool != NULL && status != EXIT_NOPERM && flush_client_to_spool(client) == KEDGE_OK &&
            kedge_client_stats(client, &st, sizeof st) == KEDGE_OK && st.records_buffered == 0 &&
            counts.dropped == 0) {
            fprintf(stderr, "%s: %llu chunks are safe in the spool %s: run again (--drain-only) to deliver them\n",
                    PROG, (unsigned long long)st.spool_chunks, o.spool);
            status = EXIT_TEMPFAIL;
        }
    } else if (io_error) {
        status = EXIT_USAGE;
    } else if (counts.dropped > 0) {
        fprintf(stderr, "%s: %llu records were dropped by the full spool while the service was unreachable\n", PROG,
                counts.dropped);
        status = EXIT_UNAVAILABLE;
    } else if (counts.dm_rejected_chunks > 0) {
        /* The DM's error code on stderr whatever the verbosity: the final error. */
        fprintf(stderr, "%s: the DM could not ingest %llu chunks (%llu records): %s\n", PROG, counts.dm_rejected_chunks,
                counts.dm_rejected_records, counts.dm_error);
        status = EXIT_DATA;
    } else if (counts.rejected > 0 || invalid > 0) {
        if (o.verbosity == 0) {
            fprintf(stderr, "%s: %llu records rejected by the service, %llu invalid input lines\n", PROG,
                    counts.rejected, invalid);
        }
        status = EXIT_DATA;
    } else {
        kedge_stats st;
        if (counts.dm_transient_chunks > 0) {
            fprintf(stderr, "%s: the DM gave up on %llu chunks (%llu records) for now: %s\n", PROG,
                    counts.dm_transient_chunks, counts.dm_transient_records, counts.dm_error);
            status = EXIT_UNAVAILABLE;
        } else if (o.wait_secs > 0 && strcmp(report_level(&o), "all") == 0 && unsettled(&counts) > 0) {
            fprintf(stderr, "%s: %llu of %llu queued chunks were not confirmed ingested within %ld s\n", PROG,
                    unsettled(&counts), counts.queued_chunks, o.wait_secs);
            status = EXIT_UNAVAILABLE;
        } else if (kedge_client_stats(client, &st, sizeof st) == KEDGE_OK && all_sent(&st) &&
                   counts.acknowledged >= st.records_appended) {
            status = EXIT_ALL_ACKNOWLEDGED;
            /* Chunks the spool could not serve are not delivered either: the exit status says so. */
            if (st.chunks_corrupt > 0) {
                fprintf(stderr, "%s: %llu spooled chunks were corrupt and are kept in %s/corrupt, not sent\n", PROG,
                        (unsigned long long)st.chunks_corrupt, o.spool != NULL ? o.spool : "?");
                status = EXIT_DATA;
            } else if (st.chunks_locked > 0) {
                fprintf(stderr,
                        "%s: %llu spooled chunks need another spool key: they are kept in %s and sent when the "
                        "spool is opened with their key\n",
                        PROG, (unsigned long long)st.chunks_locked, o.spool != NULL ? o.spool : "?");
                status = EXIT_TEMPFAIL;
            }
        } else {
            fprintf(stderr, "%s: not every record was acknowledged\n", PROG);
            status = EXIT_OTHER;
        }
    }

    if (client != NULL && status != EXIT_ALL_ACKNOWLEDGED) {
        /* Records taken but neither delivered nor on flash are lost when the client goes: say how many, and
         * where the input can be resumed to send them again. */
        kedge_stats st;
        if (o.spool != NULL) {
            (void)flush_client_to_spool(client);
        }
        if (kedge_client_stats(client, &st, sizeof st) == KEDGE_OK && st.records_buffered > 0) {
            flush_repeats(&counts);
            fprintf(stderr,
                    "%s: %llu records taken were lost (neither delivered nor in the spool): resume the input at %s "
                    "line %lu\n",
                    PROG, (unsigned long long)st.records_buffered, run.batch_file ? run.batch_file : "?",
                    run.batch_line);
            if (status == EXIT_TEMPFAIL || status == EXIT_ALL_ACKNOWLEDGED) {
                status = EXIT_UNAVAILABLE;
            }
        }
    }
    flush_repeats(&counts);

out:
    kedge_client_free(client);
    kedge_config_free(config);
    free(line);
    free(chunk);
    free(o.x_opts);
    free(o.files);
    return status;
}

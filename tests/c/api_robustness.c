/*
 * api_robustness: every exported function of kusto_edge.h called with NULL for each pointer and with garbage,
 * checked against the result code the header documents. Needs no server: the one client that "sends" points at
 * http://127.0.0.1:9 (nothing listens there; small timeouts) and is expected to fail transiently.
 *
 * Prints "FAIL: ..." per failed check and a last line "N passed, M failed"; exits 0 only when M is 0.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kusto_edge.h"

/* A string literal as (pointer, length) without its terminator. */
#define LIT(s) (const uint8_t *)(s), (sizeof(s) - 1)

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

static void expect(kedge_result got, kedge_result want, const char *what)
{
    if (got == want) {
        passed++;
    } else {
        failed++;
        printf("FAIL: %s: got %u (%s), want %u (%s)\n", what, (unsigned)got, kedge_result_str(got),
               (unsigned)want, kedge_result_str(want));
    }
}

static int keeps_data(kedge_result r)
{
    return r == KEDGE_TRANSIENT_FAILURE || r == KEDGE_BACKING_OFF || r == KEDGE_TARGET_NOT_READY ||
           r == KEDGE_AUTH_REFUSED || r == KEDGE_QUEUE_FULL;
}

static int is_unknown_code_text(const char *s)
{
    return s != NULL && strcmp(s, "unknown result code") == 0;
}

/* What the callbacks saw, including what calling back into the client returned. */
struct probe {
    kedge_client *client; /* set once the client exists; NULL: do not call back in */
    unsigned deliveries;
    unsigned failed_reports;
    kedge_result report_result;
    int report_fields_ok;
    unsigned logs;
    int log_text_ok;
    kedge_result reentrant_append;
    kedge_result reentrant_flush;
    kedge_result reentrant_poll;
    kedge_result reentrant_add;
    unsigned long long callback_appends;
    int is_final_ok;
    kedge_result stats_in_callback;
    kedge_result last_error_in_callback;
};

static void on_delivery(void *userdata, const struct kedge_delivery_report *r)
{
    struct probe *p = userdata;
    p->deliveries++;
    if (r->outcome == KEDGE_OUTCOME_FAILED) {
        p->failed_reports++;
    }
    /* Failed and spooled are intermediate; acknowledged, rejected and dropped are each chunk's last word. */
    if (r->is_final != (r->outcome == KEDGE_OUTCOME_ACKNOWLEDGED || r->outcome == KEDGE_OUTCOME_REJECTED ||
                        r->outcome == KEDGE_OUTCOME_DROPPED)) {
        p->is_final_ok = 0;
    }
    p->report_result = r->result;
    p->report_fields_ok = r->chunk_id != NULL && strlen(r->chunk_id) == 36 && r->message != NULL &&
                          r->message[0] != '\0' && r->records == 1 && r->raw_bytes > 0 && r->destination == 2;
    if (p->client != NULL) {
        kedge_stats st;
        char buf[64];
        uint32_t id = 0;
        uint32_t next = 0;
        p->reentrant_append = kedge_append(p->client, 0, LIT("{}"));
        p->callback_appends += p->reentrant_append == KEDGE_OK;
        p->reentrant_flush = kedge_flush(p->client);
        p->reentrant_poll = kedge_poll(p->client, &next);
        p->reentrant_add = kedge_client_add_destination(p->client, "db", "T2", "csv", NULL, &id);
        p->stats_in_callback = kedge_client_stats(p->client, &st, sizeof st);
        p->last_error_in_callback = kedge_client_last_error(p->client, buf, sizeof buf, NULL);
    }
}

static void on_log(void *userdata, kedge_log_level level, const char *message)
{
    struct probe *p = userdata;
    p->logs++;
    if (message == NULL || (level < KEDGE_LOG_ERROR || level > KEDGE_LOG_DEBUG)) {
        p->log_text_ok = 0;
    }
}

static void check_static_functions(void)
{
    static const uint32_t known[] = {
        KEDGE_OK,                  KEDGE_NULL_PARAMETER,        KEDGE_INVALID_ARGUMENT, KEDGE_CONFIG_UNKNOWN_KEY,
        KEDGE_CONFIG_INVALID_VALUE, KEDGE_CONFIG_INCOMPLETE,    KEDGE_INSECURE_TRANSPORT, KEDGE_TLS_CONFIG,
        KEDGE_INVALID_DESTINATION, KEDGE_TOO_MANY_DESTINATIONS, KEDGE_RECORD_TOO_LARGE, KEDGE_INVALID_RECORD,
        KEDGE_TRANSIENT_FAILURE,   KEDGE_BACKING_OFF,           KEDGE_DATA_REJECTED,    KEDGE_TARGET_NOT_READY,
        KEDGE_AUTH_REFUSED,        KEDGE_SPOOL_FULL,            KEDGE_SPOOL_IO,         KEDGE_REENTRANT_CALL,
        KEDGE_SPOOLED,             KEDGE_INTERNAL,              KEDGE_PANIC,
    };
    static const uint32_t unknown[] = {100, 1000, 12345, 0x7FFFFFFFu, 0xFFFFFFFFu};
    const char *v = kedge_version();
    size_t i;
    int all_known = 1;
    int all_unknown = 1;

    check(v != NULL && v[0] != '\0' && strchr(v, '.') != NULL, "kedge_version is a dotted version string");
    for (i = 0; i < sizeof known / sizeof known[0]; i++) {
        const char *s = kedge_result_str(known[i]);
        if (s == NULL || s[0] == '\0' || is_unknown_code_text(s)) {
            all_known = 0;
            printf("  code %u has no text\n", (unsigned)known[i]);
        }
    }
    check(all_known, "kedge_result_str has a text for every documented code");
    for (i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        all_unknown &= is_unknown_code_text(kedge_result_str(unknown[i]));
    }
    check(all_unknown, "kedge_result_str(12345 and other undocumented codes) is \"unknown result code\"");
    check(KEDGE_OK == 0 && KEDGE_NULL_PARAMETER == 1 && KEDGE_REENTRANT_CALL == 19 && KEDGE_INTERNAL == 98 &&
              KEDGE_PANIC == 99,
          "result code numbers are the fixed ones");
}

struct bad_value {
    const char *key;
    const char *value;
};

static void check_config(const char *self_path)
{
    static const struct bad_value bad[] = {
        {"batch.bytes", "0"},
        {"batch.bytes", "1023"},
        {"batch.bytes", "4194305"},
        {"batch.bytes", "12k"},
        {"batch.bytes", "-1"},
        {"batch.bytes", ""},
        {"batch.bytes", "99999999999999999999999999"},
        {"batch.max_age_ms", "soon"},
        {"log.level", "loud"},
        {"url", "ftp://example.com"},
        {"url", ""},
        {"url", "example.com"},
        {"url", "https://example.com/path"},
        {"url", "https://example.com:0"},
        {"url", "https://example.com:99999"},
        {"url", "https://exa mple.com"},
        {"url", "https://user@example.com"},
        {"retry.max_attempts", "0"},
        {"retry.max_attempts", "101"},
        {"timeout.connect_ms", "0"},
        {"timeout.recv_ms", "-5"},
        {"destinations.max", "0"},
        {"destinations.max", "257"},
        {"http.allow_plain", "maybe"},
        {"tls.bundled_roots", "2"},
        {"client.app", ""},
        {"client.app", "tab\there"},
        {"client.user", "caf\xc3\xa9"},
        {"auth.token", ""},
        {"auth.token", "has space"},
        {"spool.policy", "maybe"},
        {"spool.max_chunks", "0"},
        {"spool.replay_per_poll", "0"},
        {"spool.write_ahead", "sometimes"},
        {"spool.key_file", "/nonexistent/kusto-edge/key"},
    };
    static const char not_pem[] = "this is not a certificate";
    static const char bad_base64_pem[] =
        "-----BEGIN CERTIFICATE-----\n!!!! not base64 ****\n-----END CERTIFICATE-----\n";
    static const uint8_t binary_junk[] = {0x00, 0xff, 0x30, 0x82, 0x00, 0x00, 0x2d, 0x2d};
    static const uint8_t key32[32] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
                                      17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
    static const uint8_t key33[33] = {0};
    kedge_config *cfg = NULL;
    kedge_config *small = NULL;
    char err[256];
    uint64_t bound = 0;
    uint64_t small_bound = 0;
    size_t i;
    int all_bad_refused = 1;

    expect(kedge_config_new(NULL), KEDGE_NULL_PARAMETER, "kedge_config_new(NULL)");
    kedge_config_free(NULL);
    check(1, "kedge_config_free(NULL) returns");
    expect(kedge_config_new(&cfg), KEDGE_OK, "kedge_config_new");
    check(cfg != NULL, "kedge_config_new gives a config");
    if (cfg == NULL) {
        return;
    }

    /* kedge_config_set: NULLs */
    err[0] = '\0';
    expect(kedge_config_set(NULL, "url", "https://example.com", err, sizeof err), KEDGE_NULL_PARAMETER,
           "kedge_config_set(config NULL)");
    check(err[0] != '\0', "kedge_config_set(config NULL) writes a message");
    expect(kedge_config_set(cfg, NULL, "x", err, sizeof err), KEDGE_NULL_PARAMETER, "kedge_config_set(key NULL)");
    expect(kedge_config_set(cfg, "url", NULL, err, sizeof err), KEDGE_NULL_PARAMETER,
           "kedge_config_set(value NULL)");
    expect(kedge_config_set(cfg, "batch.size", "10", NULL, 100), KEDGE_CONFIG_UNKNOWN_KEY,
           "kedge_config_set(unknown key, errbuf NULL)");

    /* unknown keys, non-UTF-8 */
    err[0] = '\0';
    expect(kedge_config_set(cfg, "batch.size", "10", err, sizeof err), KEDGE_CONFIG_UNKNOWN_KEY,
           "kedge_config_set(unknown key)");
    check(strstr(err, "batch.size") != NULL, "unknown-key message names the key");
    expect(kedge_config_set(cfg, "", "1", err, sizeof err), KEDGE_CONFIG_UNKNOWN_KEY, "kedge_config_set(empty key)");
    expect(kedge_config_set(cfg, "\xff\xfe", "1", err, sizeof err), KEDGE_INVALID_ARGUMENT,
           "kedge_config_set(non-UTF-8 key)");
    expect(kedge_config_set(cfg, "client.app", "\xc3\x28", err, sizeof err), KEDGE_INVALID_ARGUMENT,
           "kedge_config_set(non-UTF-8 value)");

    /* bad values */
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kedge_result r = kedge_config_set(cfg, bad[i].key, bad[i].value, err, sizeof err);
        if (r != KEDGE_CONFIG_INVALID_VALUE) {
            all_bad_refused = 0;
            printf("  %s='%s' gave %u (%s)\n", bad[i].key, bad[i].value, (unsigned)r, kedge_result_str(r));
        }
    }
    check(all_bad_refused, "every bad value is KEDGE_CONFIG_INVALID_VALUE");
    err[0] = '\0';
    expect(kedge_config_set(cfg, "auth.token", "s3cr3t value", err, sizeof err), KEDGE_CONFIG_INVALID_VALUE,
           "kedge_config_set(auth.token with a space)");
    check(err[0] != '\0' && strstr(err, "s3cr3t") == NULL, "a bad token's message does not show the token");
    expect(kedge_config_set(cfg, "tls.ca_file", "/nonexistent/kusto-edge/ca.pem", err, sizeof err),
           KEDGE_TLS_CONFIG, "kedge_config_set(tls.ca_file missing)");
    expect(kedge_config_set(cfg, "tls.ca_file", self_path, err, sizeof err), KEDGE_TLS_CONFIG,
           "kedge_config_set(tls.ca_file not PEM)");

    /* errbuf: truncated, terminated, never written past its length */
    memset(err, 'Z', sizeof err);
    expect(kedge_config_set(cfg, "no.such.key", "1", err, 0), KEDGE_CONFIG_UNKNOWN_KEY,
           "kedge_config_set(errbuf_len 0)");
    check(err[0] == 'Z', "errbuf_len 0: nothing written");
    expect(kedge_config_set(cfg, "no.such.key", "1", err, 1), KEDGE_CONFIG_UNKNOWN_KEY,
           "kedge_config_set(errbuf_len 1)");
    check(err[0] == '\0' && err[1] == 'Z', "errbuf_len 1: just the terminator");
    memset(err, 'Z', sizeof err);
    expect(kedge_config_set(cfg, "no.such.key", "1", err, 8), KEDGE_CONFIG_UNKNOWN_KEY,
           "kedge_config_set(errbuf_len 8)");
    check(err[7] == '\0' && strlen(err) == 7 && err[8] == 'Z', "errbuf_len 8: 7 characters and the terminator");

    /* kedge_config_set_ca_pem (its messages: tests/c/config_errbuf.c) */
    expect(kedge_config_set_ca_pem(NULL, (const uint8_t *)not_pem, strlen(not_pem), err, sizeof err),
           KEDGE_NULL_PARAMETER, "kedge_config_set_ca_pem(config NULL)");
    expect(kedge_config_set_ca_pem(cfg, NULL, 10, err, sizeof err), KEDGE_NULL_PARAMETER,
           "kedge_config_set_ca_pem(pem NULL)");
    expect(kedge_config_set_ca_pem(cfg, NULL, 0, NULL, 0), KEDGE_NULL_PARAMETER,
           "kedge_config_set_ca_pem(pem NULL, 0, errbuf NULL)");
    expect(kedge_config_set_ca_pem(cfg, (const uint8_t *)not_pem, 0, err, sizeof err), KEDGE_TLS_CONFIG,
           "kedge_config_set_ca_pem(length 0)");
    expect(kedge_config_set_ca_pem(cfg, (const uint8_t *)not_pem, 1, err, sizeof err), KEDGE_TLS_CONFIG,
           "kedge_config_set_ca_pem(length 1)");
    expect(kedge_config_set_ca_pem(cfg, (const uint8_t *)not_pem, strlen(not_pem), err, sizeof err),
           KEDGE_TLS_CONFIG, "kedge_config_set_ca_pem(not PEM)");
    expect(kedge_config_set_ca_pem(cfg, (const uint8_t *)bad_base64_pem, strlen(bad_base64_pem), err, sizeof err),
           KEDGE_TLS_CONFIG, "kedge_config_set_ca_pem(bad base64)");
    expect(kedge_config_set_ca_pem(cfg, binary_junk, sizeof binary_junk, NULL, 0), KEDGE_TLS_CONFIG,
           "kedge_config_set_ca_pem(binary junk, errbuf NULL)");

    /* kedge_config_set_spool_key: exactly 32 bytes */
    expect(kedge_config_set_spool_key(NULL, key32, sizeof key32, err, sizeof err), KEDGE_NULL_PARAMETER,
           "kedge_config_set_spool_key(config NULL)");
    expect(kedge_config_set_spool_key(cfg, NULL, 32, err, sizeof err), KEDGE_NULL_PARAMETER,
           "kedge_config_set_spool_key(key NULL)");
    expect(kedge_config_set_spool_key(cfg, key32, 0, err, sizeof err), KEDGE_INVALID_ARGUMENT,
           "kedge_config_set_spool_key(length 0)");
    expect(kedge_config_set_spool_key(cfg, key32, 1, NULL, 0), KEDGE_INVALID_ARGUMENT,
           "kedge_config_set_spool_key(length 1, errbuf NULL)");
    expect(kedge_config_set_spool_key(cfg, key32, 31, err, sizeof err), KEDGE_INVALID_ARGUMENT,
           "kedge_config_set_spool_key(length 31)");
    expect(kedge_config_set_spool_key(cfg, key33, 33, err, sizeof err), KEDGE_INVALID_ARGUMENT,
           "kedge_config_set_spool_key(length 33)");
    expect(kedge_config_set_spool_key(cfg, key32, sizeof key32, err, sizeof err), KEDGE_OK,
           "kedge_config_set_spool_key(32 bytes)");

    /* callbacks */
    expect(kedge_config_set_log_callback(NULL, on_log, NULL), KEDGE_NULL_PARAMETER,
           "kedge_config_set_log_callback(config NULL)");
    expect(kedge_config_set_log_callback(cfg, NULL, NULL), KEDGE_OK, "kedge_config_set_log_callback(callback NULL)");
    expect(kedge_config_set_delivery_callback(NULL, on_delivery, NULL), KEDGE_NULL_PARAMETER,
           "kedge_config_set_delivery_callback(config NULL)");
    expect(kedge_config_set_delivery_callback(cfg, NULL, NULL), KEDGE_OK,
           "kedge_config_set_delivery_callback(callback NULL)");

    /* memory bound */
    bound = 12345;
    expect(kedge_config_memory_bound(NULL, &bound), KEDGE_NULL_PARAMETER, "kedge_config_memory_bound(config NULL)");
    check(bound == 12345, "kedge_config_memory_bound leaves the output alone on failure");
    expect(kedge_config_memory_bound(cfg, NULL), KEDGE_NULL_PARAMETER, "kedge_config_memory_bound(out NULL)");
    expect(kedge_config_memory_bound(cfg, &bound), KEDGE_OK, "kedge_config_memory_bound(defaults)");
    /* defaults: 8 destinations x 1 MiB batches, plus the compressed body and fixed state */
    check(bound >= 8ull * 1024 * 1024 && bound <= 64ull * 1024 * 1024,
          "default memory bound is plausible (8..64 MiB)");
    expect(kedge_config_new(&small), KEDGE_OK, "kedge_config_new (small)");
    if (small != NULL) {
        expect(kedge_config_set(small, "batch.bytes", "1024", err, sizeof err), KEDGE_OK, "batch.bytes=1024");
        expect(kedge_config_set(small, "destinations.max", "1", err, sizeof err), KEDGE_OK, "destinations.max=1");
        expect(kedge_config_memory_bound(small, &small_bound), KEDGE_OK, "kedge_config_memory_bound(small)");
        check(small_bound > 1024 && small_bound < 2ull * 1024 * 1024 && small_bound < bound,
              "small config's memory bound is plausible (1 KiB..2 MiB, below the default)");
        kedge_config_free(small);
    }

    /* the config survived all that and still takes good values */
    expect(kedge_config_set(cfg, "url", "https://mycluster.westeurope.kusto.windows.net", err, sizeof err), KEDGE_OK,
           "kedge_config_set(url) after failures");
    expect(kedge_config_set(cfg, "log.level", "DEBUG", err, sizeof err), KEDGE_OK, "kedge_config_set(log.level)");
    kedge_config_free(cfg);
}

/* A config from key=value pairs; NULL if any is refused. */
static kedge_config *config_of(const char *const *kv, size_t n)
{
    kedge_config *cfg = NULL;
    char err[256];
    size_t i;
    if (kedge_config_new(&cfg) != KEDGE_OK) {
        return NULL;
    }
    for (i = 0; i + 1 < n; i += 2) {
        if (kedge_config_set(cfg, kv[i], kv[i + 1], err, sizeof err) != KEDGE_OK) {
            printf("  setting %s: %s\n", kv[i], err);
            kedge_config_free(cfg);
            return NULL;
        }
    }
    return cfg;
}

static void expect_client_new(const char *const *kv, size_t n, kedge_result want, const char *what)
{
    static char not_written;
    kedge_client *client = (kedge_client *)(void *)&not_written;
    char err[256];
    kedge_config *cfg = config_of(kv, n);
    check(cfg != NULL, what);
    if (cfg == NULL) {
        return;
    }
    err[0] = '\0';
    expect(kedge_client_new(cfg, &client, err, sizeof err), want, what);
    check(err[0] != '\0', "kedge_client_new failure writes a message");
    check(client == (kedge_client *)(void *)&not_written, "kedge_client_new leaves out_client alone on failure");
    if (client != (kedge_client *)(void *)&not_written) {
        kedge_client_free(client);
    }
    kedge_config_free(cfg);
}

static void check_client_new(void)
{
    static const char *const empty[] = {NULL};
    static const char *const remote_http[] = {"url", "http://example.com"};
    static const char *const loopback_http[] = {"url", "http://127.0.0.1:9"};
    static const char *const remote_http_plain[] = {"url", "http://example.com", "http.allow_plain", "true"};
    static const char *const remote_http_token[] = {"url",   "http://example.com", "http.allow_plain", "true",
                                                    "http.allow_plain_remote", "true", "auth.token", "abc"};
    static const char *const no_roots[] = {"url", "https://example.com", "tls.bundled_roots", "false"};
    static const char *const bad_retry[] = {"url", "https://example.com", "retry.base_ms", "1000",
                                            "retry.max_delay_ms", "10"};
    kedge_config *cfg = NULL;
    kedge_client *client = NULL;
    char err[8];

    expect(kedge_client_new(NULL, &client, NULL, 0), KEDGE_NULL_PARAMETER, "kedge_client_new(config NULL)");
    check(client == NULL, "kedge_client_new(config NULL) leaves out_client alone");
    cfg = config_of(empty, 0);
    if (cfg != NULL) {
        expect(kedge_client_new(cfg, NULL, err, sizeof err), KEDGE_NULL_PARAMETER, "kedge_client_new(out NULL)");
        memset(err, 'Z', sizeof err);
        expect(kedge_client_new(cfg, &client, err, 1), KEDGE_CONFIG_INCOMPLETE,
               "kedge_client_new(empty config, errbuf_len 1)");
        check(err[0] == '\0' && err[1] == 'Z', "kedge_client_new errbuf_len 1: just the terminator");
        expect(kedge_client_new(cfg, &client, NULL, 0), KEDGE_CONFIG_INCOMPLETE,
               "kedge_client_new(empty config, errbuf NULL)");
        kedge_config_free(cfg);
    }
    expect_client_new(empty, 0, KEDGE_CONFIG_INCOMPLETE, "kedge_client_new(empty config)");
    expect_client_new(remote_http, 2, KEDGE_INSECURE_TRANSPORT, "kedge_client_new(http://example.com)");
    expect_client_new(loopback_http, 2, KEDGE_INSECURE_TRANSPORT,
                      "kedge_client_new(http://127.0.0.1 without http.allow_plain)");
    expect_client_new(remote_http_plain, 4, KEDGE_INSECURE_TRANSPORT,
                      "kedge_client_new(http://example.com with http.allow_plain only)");
    expect_client_new(remote_http_token, 8, KEDGE_INSECURE_TRANSPORT,
                      "kedge_client_new(token over plain http to a remote host)");
    expect_client_new(no_roots, 4, KEDGE_TLS_CONFIG, "kedge_client_new(https without any trusted root)");
    expect_client_new(bad_retry, 6, KEDGE_CONFIG_INVALID_VALUE,
                      "kedge_client_new(retry.max_delay_ms < retry.base_ms)");
    kedge_client_free(NULL);
    check(1, "kedge_client_free(NULL) returns");
}

static void check_last_error_truncation(kedge_client *client, const char *when)
{
    char full[512];
    char one[1 + 4];
    char eight[8 + 4];
    size_t len = 0;
    size_t len1 = 0;
    size_t len8 = 0;
    char what[160];

    memset(full, 0, sizeof full);
    expect(kedge_client_last_error(client, full, sizeof full, &len), KEDGE_OK, "kedge_client_last_error");
    snprintf(what, sizeof what, "last error after %s is non-empty and out_len is its length", when);
    check(full[0] != '\0' && len == strlen(full), what);
    memset(one, 'Z', sizeof one);
    expect(kedge_client_last_error(client, one, 1, &len1), KEDGE_OK, "kedge_client_last_error(buf_len 1)");
    snprintf(what, sizeof what, "last error after %s into 1 byte: terminator only, full length reported", when);
    check(one[0] == '\0' && one[1] == 'Z' && len1 == len, what);
    memset(eight, 'Z', sizeof eight);
    expect(kedge_client_last_error(client, eight, 8, &len8), KEDGE_OK, "kedge_client_last_error(buf_len 8)");
    snprintf(what, sizeof what, "last error after %s into 8 bytes: a terminated prefix, nothing past the end", when);
    check(eight[7] == '\0' && strlen(eight) <= 7 && strncmp(eight, full, strlen(eight)) == 0 && eight[8] == 'Z' &&
              len8 == len,
          what);
    expect(kedge_client_last_error(client, eight, 8, NULL), KEDGE_OK, "kedge_client_last_error(out_len NULL)");
}

static void check_client_calls(void)
{
    static const char *const kv[] = {
        "url", "http://127.0.0.1:9", "http.allow_plain", "true", "batch.bytes", "1024", "destinations.max", "3",
        "timeout.connect_ms", "300", "timeout.send_ms", "300", "timeout.recv_ms", "300", "retry.max_attempts", "2",
        "retry.base_ms", "1", "retry.max_delay_ms", "5", "retry.max_total_ms", "3000", "backoff.max_ms", "60000",
        "log.level", "debug",
    };
    static char big[2048];
    static char exact[1024];
    struct probe probe;
    kedge_config *cfg;
    kedge_client *client = NULL;
    kedge_stats st;
    char err[256];
    char buf[64];
    size_t len = 99;
    uint32_t id = 0xDEADBEEFu;
    uint32_t next = 0;
    unsigned long long ok_appends = 0;
    kedge_result r;

    memset(&probe, 0, sizeof probe);
    probe.log_text_ok = 1;
    probe.is_final_ok = 1;
    cfg = config_of(kv, sizeof kv / sizeof kv[0]);
    check(cfg != NULL, "loopback test config accepted");
    if (cfg == NULL) {
        return;
    }
    expect(kedge_config_set_delivery_callback(cfg, on_delivery, &probe), KEDGE_OK, "set delivery callback");
    expect(kedge_config_set_log_callback(cfg, on_log, &probe), KEDGE_OK, "set log callback");
    expect(kedge_client_new(cfg, &client, err, sizeof err), KEDGE_OK, "kedge_client_new(http://127.0.0.1:9)");
    kedge_config_free(cfg); /* the client has its own copy */
    if (client == NULL) {
        return;
    }

    /* last_error before any failure; its own NULL handling */
    memset(buf, 'Z', sizeof buf);
    expect(kedge_client_last_error(client, buf, sizeof buf, &len), KEDGE_OK, "kedge_client_last_error(fresh)");
    check(buf[0] == '\0' && len == 0, "a fresh client's last error is empty");
    expect(kedge_client_last_error(NULL, buf, sizeof buf, &len), KEDGE_NULL_PARAMETER,
           "kedge_client_last_error(client NULL)");
    expect(kedge_client_last_error(client, NULL, 10, &len), KEDGE_NULL_PARAMETER,
           "kedge_client_last_error(buf NULL)");
    expect(kedge_client_last_error(client, buf, 0, &len), KEDGE_INVALID_ARGUMENT,
           "kedge_client_last_error(buf_len 0)");

    /* kedge_client_add_destination */
    expect(kedge_client_add_destination(NULL, "db", "T", "json", NULL, &id), KEDGE_NULL_PARAMETER,
           "add_destination(client NULL)");
    expect(kedge_client_add_destination(client, NULL, "T", "json", NULL, &id), KEDGE_NULL_PARAMETER,
           "add_destination(database NULL)");
    expect(kedge_client_add_destination(client, "db", NULL, "json", NULL, &id), KEDGE_NULL_PARAMETER,
           "add_destination(table NULL)");
    expect(kedge_client_add_destination(client, "db", "T", NULL, NULL, &id), KEDGE_NULL_PARAMETER,
           "add_destination(format NULL)");
    expect(kedge_client_add_destination(client, "db", "T", "json", NULL, NULL), KEDGE_NULL_PARAMETER,
           "add_destination(out NULL)");
    expect(kedge_client_add_destination(client, "db", "T", "xml", NULL, &id), KEDGE_INVALID_ARGUMENT,
           "add_destination(format \"xml\")");
    check_last_error_truncation(client, "an unknown format");
    expect(kedge_client_add_destination(client, "db", "T", "", NULL, &id), KEDGE_INVALID_ARGUMENT,
           "add_destination(format \"\")");
    expect(kedge_client_add_destination(client, "", "T", "json", NULL, &id), KEDGE_INVALID_ARGUMENT,
           "add_destination(database \"\")");
    expect(kedge_client_add_destination(client, "db", "", "json", NULL, &id), KEDGE_INVALID_ARGUMENT,
           "add_destination(table \"\")");
    expect(kedge_client_add_destination(client, "db", "T\n", "json", NULL, &id), KEDGE_INVALID_ARGUMENT,
           "add_destination(table with a line break)");
    expect(kedge_client_add_destination(client, "d\xff", "T", "json", NULL, &id), KEDGE_INVALID_ARGUMENT,
           "add_destination(database not UTF-8)");
    expect(kedge_client_add_destination(client, "db", "T", "js\xc3", NULL, &id), KEDGE_INVALID_ARGUMENT,
           "add_destination(format not UTF-8)");
    expect(kedge_client_add_destination(client, "db", "T", "json", "", &id), KEDGE_INVALID_ARGUMENT,
           "add_destination(mapping \"\")");
    expect(kedge_client_add_destination(client, "db", "T", "json", "m\x80", &id), KEDGE_INVALID_ARGUMENT,
           "add_destination(mapping not UTF-8)");
    check(id == 0xDEADBEEFu, "add_destination leaves out_destination alone on failure");
    expect(kedge_client_add_destination(client, "db", "T", "JSON", NULL, &id), KEDGE_OK, "add_destination(json)");
    check(id == 0, "first destination is 0");
    expect(kedge_client_add_destination(client, "db", "T", "csv", "map1", &id), KEDGE_OK,
           "add_destination(csv, mapping)");
    check(id == 1, "second destination is 1");
    expect(kedge_client_add_destination(client, "db", "Blobs", "avro", NULL, &id), KEDGE_OK,
           "add_destination(avro)");
    check(id == 2, "third destination is 2");
    id = 0xDEADBEEFu;
    expect(kedge_client_add_destination(client, "db", "T4", "json", NULL, &id), KEDGE_TOO_MANY_DESTINATIONS,
           "add_destination beyond destinations.max");
    check(id == 0xDEADBEEFu, "add_destination beyond the limit leaves out_destination alone");

    /* kedge_client_stats */
    expect(kedge_client_stats(NULL, &st, sizeof st), KEDGE_NULL_PARAMETER, "kedge_client_stats(client NULL)");
    expect(kedge_client_stats(client, NULL, sizeof st), KEDGE_NULL_PARAMETER, "kedge_client_stats(out NULL)");
    expect(kedge_client_stats(client, &st, sizeof st), KEDGE_OK, "kedge_client_stats");
    expect(kedge_client_stats(client, &st, 0), KEDGE_INVALID_ARGUMENT, "kedge_client_stats(size 0)");
    expect(kedge_client_stats(client, &st, 7), KEDGE_INVALID_ARGUMENT, "kedge_client_stats(size 7)");
    {
        /* An older, shorter struct: only its fields are written, nothing past its end. */
        uint64_t older[3] = {0, 0, 0xA5A5A5A5A5A5A5A5ull};
        expect(kedge_client_stats(client, (struct kedge_stats *)(void *)older, 2 * sizeof(uint64_t)), KEDGE_OK,
               "kedge_client_stats(older struct)");
        check(older[2] == 0xA5A5A5A5A5A5A5A5ull, "kedge_client_stats writes no more than stats_size bytes");
    }
    check(st.destinations == 3 && st.records_appended == 0 && st.requests == 0, "stats of a fresh client");

    /* kedge_append: NULLs, bad ids, bad records */
    expect(kedge_append(NULL, 0, LIT("{}")), KEDGE_NULL_PARAMETER, "append(client NULL)");
    expect(kedge_append(client, 0, NULL, 2), KEDGE_NULL_PARAMETER, "append(record NULL)");
    expect(kedge_append(client, 0, NULL, 0), KEDGE_NULL_PARAMETER, "append(record NULL, length 0)");
    expect(kedge_append(client, 7, LIT("{}")), KEDGE_INVALID_DESTINATION, "append(destination 7)");
    expect(kedge_append(client, 3, LIT("{}")), KEDGE_INVALID_DESTINATION, "append(destination 3)");
    expect(kedge_append(client, 0xFFFFFFFFu, LIT("{}")), KEDGE_INVALID_DESTINATION,
           "append(destination 0xFFFFFFFF)");
    check_last_error_truncation(client, "an invalid destination");
    expect(kedge_append(client, 0, (const uint8_t *)"{}", 0), KEDGE_INVALID_RECORD, "append(empty record)");
    memset(big, 'x', sizeof big);
    big[0] = '"';
    big[sizeof big - 1] = '"';
    expect(kedge_append(client, 0, (const uint8_t *)big, sizeof big), KEDGE_RECORD_TOO_LARGE,
           "append(record larger than batch.bytes)");
    memset(exact, 'x', sizeof exact);
    expect(kedge_append(client, 0, (const uint8_t *)exact, sizeof exact), KEDGE_RECORD_TOO_LARGE,
           "append(json record of exactly batch.bytes: no room for its newline)");
    expect(kedge_append(client, 2, (const uint8_t *)big, sizeof big), KEDGE_RECORD_TOO_LARGE,
           "append(avro record larger than batch.bytes)");
    /* A length from a failed read() ((size_t)-1) or plain garbage: refused from the length alone, before a
     * byte is read (valgrind and ASan see any read past the 2-byte buffer). */
    expect(kedge_append(client, 0, (const uint8_t *)"{}", SIZE_MAX), KEDGE_RECORD_TOO_LARGE,
           "append(record_len SIZE_MAX)");
    expect(kedge_append(client, 0, (const uint8_t *)"{}", SIZE_MAX / 2), KEDGE_RECORD_TOO_LARGE,
           "append(record_len SIZE_MAX/2)");
    expect(kedge_append(client, 2, (const uint8_t *)"{}", (size_t)-1), KEDGE_RECORD_TOO_LARGE,
           "append(avro, record_len (size_t)-1)");
    expect(kedge_append(client, 0, (const uint8_t *)"{}", sizeof big + 1), KEDGE_RECORD_TOO_LARGE,
           "append(record_len one past batch.bytes)");
    expect(kedge_append(client, 0, LIT("{\"a\":\"\xff\xfe\"}")), KEDGE_INVALID_RECORD,
           "append(json not UTF-8)");
    expect(kedge_append(client, 0, LIT("{\"a\":\n1}")), KEDGE_INVALID_RECORD,
           "append(json with a line break inside)");
    expect(kedge_append(client, 1, LIT("a,\xc3")), KEDGE_INVALID_RECORD, "append(csv not UTF-8)");
    check_last_error_truncation(client, "an invalid record");

    /* good records, including 1-byte ones */
    r = kedge_append(client, 0, LIT("{\"a\":1}\n"));
    expect(r, KEDGE_OK, "append(json with trailing newline)");
    ok_appends += r == KEDGE_OK;
    r = kedge_append(client, 1, LIT("1"));
    expect(r, KEDGE_OK, "append(csv record of 1 byte)");
    ok_appends += r == KEDGE_OK;
    r = kedge_append(client, 2, LIT("\xff\xfe\x00\x01"));
    expect(r, KEDGE_OK, "append(avro bytes, not UTF-8)");
    ok_appends += r == KEDGE_OK;

    /* kedge_append_lines: NULLs, bad ids, a garbage length, a format of documents; then records as lines */
    {
        kedge_lines_taken lt;
        static const char lines[] = "{\"b\":2}\r\n\n{\"c\":3}\n{\"d\":\n{\"e\":5}\n{\"tail\":";
        memset(&lt, 0xA5, sizeof lt);
        expect(kedge_append_lines(NULL, 0, LIT("{}\n"), 10, &lt), KEDGE_NULL_PARAMETER, "append_lines(client NULL)");
        expect(kedge_append_lines(client, 0, LIT("{}\n"), 10, NULL), KEDGE_NULL_PARAMETER, "append_lines(out NULL)");
        expect(kedge_append_lines(client, 0, NULL, 3, 10, &lt), KEDGE_NULL_PARAMETER, "append_lines(buf NULL)");
        check(lt.consumed_len == 0 && lt.records == 0 && lt.lines == 0, "append_lines zeroes *out on failure");
        expect(kedge_append_lines(client, 7, LIT("{}\n"), 10, &lt), KEDGE_INVALID_DESTINATION,
               "append_lines(destination 7)");
        expect(kedge_append_lines(client, 0, (const uint8_t *)"{}\n", SIZE_MAX, 10, &lt), KEDGE_INVALID_ARGUMENT,
               "append_lines(len SIZE_MAX)");
        expect(kedge_append_lines(client, 2, LIT("x\n"), 10, &lt), KEDGE_INVALID_ARGUMENT,
               "append_lines(avro: documents, not lines)");
        expect(kedge_append_lines(client, 0, LIT("{}\n"), 0, &lt), KEDGE_OK, "append_lines(max_records 0)");
        check(lt.consumed_len == 0 && lt.records == 0, "append_lines(max_records 0) takes nothing");
        expect(kedge_append_lines(client, 0, LIT(lines), UINT64_MAX, &lt), KEDGE_INVALID_RECORD,
               "append_lines stops at a bad line");
        check(lt.records == 2 && lt.lines == 3 && lt.consumed_len == strlen("{\"b\":2}\r\n\n{\"c\":3}\n"),
              "append_lines: two records and an empty line before the bad one, which is not taken");
        ok_appends += lt.records;
        {
            size_t at = lt.consumed_len + strlen("{\"d\":\n");
            expect(kedge_append_lines(client, 0, (const uint8_t *)lines + at, strlen(lines) - at, UINT64_MAX, &lt),
                   KEDGE_OK, "append_lines after the bad line");
            check(lt.records == 1 && lt.lines == 1 && lt.consumed_len == strlen("{\"e\":5}\n"),
                  "append_lines leaves the incomplete last line");
            ok_appends += lt.records;
        }
    }
    expect(kedge_client_stats(client, &st, sizeof st), KEDGE_OK, "kedge_client_stats after appends");
    check(st.records_appended == ok_appends && st.records_buffered == ok_appends && st.requests == 0,
          "only the good records were taken, nothing sent yet");

    /* kedge_poll: nothing due yet (batch.max_age_ms is 5 s) */
    expect(kedge_poll(NULL, &next), KEDGE_NULL_PARAMETER, "kedge_poll(client NULL)");
    expect(kedge_poll(NULL, NULL), KEDGE_NULL_PARAMETER, "kedge_poll(NULL, NULL)");
    expect(kedge_poll(client, NULL), KEDGE_OK, "kedge_poll(out_next_ms NULL)");
    next = 0xFFFFFFFFu;
    expect(kedge_poll(client, &next), KEDGE_OK, "kedge_poll");
    check(next > 0 && next <= 5000, "kedge_poll: next work within batch.max_age_ms");
    expect(kedge_flush(NULL), KEDGE_NULL_PARAMETER, "kedge_flush(NULL)");
    expect(kedge_flush_to_spool(NULL), KEDGE_NULL_PARAMETER, "kedge_flush_to_spool(NULL)");
    expect(kedge_flush_to_spool(client), KEDGE_INVALID_ARGUMENT, "kedge_flush_to_spool without spool.dir");
    expect(kedge_client_stats(client, &st, sizeof st), KEDGE_OK, "kedge_client_stats after kedge_flush_to_spool");
    check(st.records_buffered == ok_appends && st.requests == 0 && st.chunks_spooled == 0,
          "kedge_flush_to_spool without a spool leaves the batches alone");

    /* An avro destination takes one record per request, and its lane holds batch.sealed (1) full chunk besides
     * the filling one: the next record finds the lane full. kedge_append never sends. */
    r = kedge_append(client, 2, LIT("AVRO"));
    expect(r, KEDGE_OK, "a second avro record seals the first and is taken");
    ok_appends += r == KEDGE_OK;
    r = kedge_append(client, 2, LIT("AVRO"));
    expect(r, KEDGE_QUEUE_FULL, "a full lane: the record is not taken");
    check(keeps_data(r), "QUEUE_FULL is a keep-the-data code");
    check_last_error_truncation(client, "a full lane");
    expect(kedge_client_stats(client, &st, sizeof st), KEDGE_OK, "kedge_client_stats after QUEUE_FULL");
    check(st.requests == 0 && st.appends_queue_full == 1 && st.records_buffered == ok_appends,
          "kedge_append never sends; the refused record is counted, not taken");

    /* kedge_poll sends the sealed chunk to a port where nothing listens: the callbacks run; from inside them,
     * appending works and sending is refused. next_ms is written although poll fails. */
    probe.client = client;
    next = 0xDEADBEEFu;
    r = kedge_poll(client, &next);
    expect(r, KEDGE_TRANSIENT_FAILURE, "poll that must send to a dead endpoint");
    check(next != 0xDEADBEEFu && next > 0, "kedge_poll writes next_ms when it fails");
    check_last_error_truncation(client, "a transient failure");
    check(probe.failed_reports >= 1, "a failed send gives a delivery report with outcome FAILED");
    check(probe.report_fields_ok, "the FAILED report has a 36-char chunk id, a message, its records and bytes");
    check(probe.is_final_ok, "is_final is set exactly on acknowledged, rejected and dropped reports");
    expect(probe.report_result, KEDGE_TRANSIENT_FAILURE, "the FAILED report's result");
    check(probe.logs >= 1 && probe.log_text_ok, "the failure was logged through the callback");
    expect(probe.reentrant_append, KEDGE_OK, "kedge_append from the delivery callback works");
    expect(probe.reentrant_flush, KEDGE_REENTRANT_CALL, "kedge_flush from the delivery callback");
    expect(probe.reentrant_poll, KEDGE_REENTRANT_CALL, "kedge_poll from the delivery callback");
    expect(probe.reentrant_add, KEDGE_TOO_MANY_DESTINATIONS,
           "kedge_client_add_destination from the delivery callback gets its ordinary answer");
    expect(probe.stats_in_callback, KEDGE_OK, "kedge_client_stats from the delivery callback");
    expect(probe.last_error_in_callback, KEDGE_OK, "kedge_client_last_error from the delivery callback");
    probe.client = NULL;

    /* Backing off now: poll does not contact the destination; its next_ms says when the backoff ends. */
    expect(kedge_client_stats(client, &st, sizeof st), KEDGE_OK, "kedge_client_stats after the failed poll");
    {
        unsigned long long requests = st.requests;
        next = 0;
        expect(kedge_poll(client, &next), KEDGE_OK, "poll while the destination backs off");
        check(next > 0, "poll while backing off says when to come back");
        expect(kedge_client_stats(client, &st, sizeof st), KEDGE_OK, "kedge_client_stats after the second poll");
        check(st.requests == requests, "no request to a destination that backs off");
    }
    r = kedge_flush_timeout(client, 2000);
    check(keeps_data(r), "kedge_flush_timeout to a dead endpoint gives a keep-the-data code");
    expect(r, KEDGE_TRANSIENT_FAILURE, "kedge_flush_timeout to a dead endpoint");
    expect(kedge_flush_timeout(NULL, 10), KEDGE_NULL_PARAMETER, "kedge_flush_timeout(NULL)");
    expect(kedge_client_stats(client, &st, sizeof st), KEDGE_OK, "kedge_client_stats after failures");
    check(st.records_buffered == ok_appends + probe.callback_appends &&
              st.records_appended == ok_appends + probe.callback_appends,
          "failed sends keep the data");
    check(st.requests >= 2 && st.failures >= 2 && st.records_acknowledged == 0 && st.last_http_status == 0,
          "failed sends are counted");

    kedge_client_free(client);
}

int main(int argc, char **argv)
{
    (void)argc;
    check_static_functions();
    check_config(argv[0]);
    check_client_new();
    check_client_calls();
    printf("%u passed, %u failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

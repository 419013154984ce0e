/*
 * config_errbuf: kedge_config_set_ca_pem and kedge_config_set_spool_key report failures into the caller's error
 * buffer exactly as kedge_config_set does: a message on every failure, NUL-terminated, truncated to errbuf_len - 1
 * bytes, never a byte written past errbuf_len, nothing written for errbuf_len 0 or on success, NULL accepted. The
 * spool key's bytes never appear in a message.
 *
 * Usage: config_errbuf PEM_FILE (a readable PEM certificate, for the success case).
 * Prints "FAIL: ..." per failed check and a last line "N passed, M failed"; exits 0 only when M is 0.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kusto_edge.h"

static unsigned passed;
static unsigned failed;

static void check(int ok, const char *what, const char *case_name)
{
    if (ok) {
        passed++;
    } else {
        failed++;
        printf("FAIL: %s: %s\n", case_name, what);
    }
}

/* One failing call, made again with whatever error buffer the check passes. */
struct failing_call {
    const char *name;
    kedge_result want;
    const char *needle; /* the message must contain this */
    kedge_result (*call)(const struct failing_call *c, char *errbuf, size_t errbuf_len);
    kedge_config *config;
    const uint8_t *bytes;
    size_t len;
};

static kedge_result call_set(const struct failing_call *c, char *errbuf, size_t errbuf_len)
{
    return kedge_config_set(c->config, (const char *)c->bytes, "1", errbuf, errbuf_len);
}

static kedge_result call_ca_pem(const struct failing_call *c, char *errbuf, size_t errbuf_len)
{
    return kedge_config_set_ca_pem(c->config, c->bytes, c->len, errbuf, errbuf_len);
}

static kedge_result call_spool_key(const struct failing_call *c, char *errbuf, size_t errbuf_len)
{
    return kedge_config_set_spool_key(c->config, c->bytes, c->len, errbuf, errbuf_len);
}

#define BUF 512
#define GUARD 'Z'

/* Every buffer-length rule on one failing call; returns the full message's length. */
static size_t check_errbuf_contract(const struct failing_call *c)
{
    char full[BUF];
    char buf[BUF];
    size_t len;
    size_t cut;
    kedge_result r;

    memset(full, GUARD, sizeof full);
    r = c->call(c, full, sizeof full);
    check(r == c->want, "the documented result code", c->name);
    check(memchr(full, '\0', sizeof full) != NULL, "the message is NUL-terminated", c->name);
    full[BUF - 1] = '\0';
    len = strlen(full);
    check(len > 0, "a message is written", c->name);
    check(strstr(full, c->needle) != NULL, "the message says what is wrong", c->name);
    if (len == 0) {
        return 0;
    }

    check(c->call(c, NULL, 0) == c->want, "errbuf NULL, errbuf_len 0: same result", c->name);
    check(c->call(c, NULL, 100) == c->want, "errbuf NULL, errbuf_len 100: same result", c->name);

    memset(buf, GUARD, sizeof buf);
    check(c->call(c, buf, 0) == c->want, "errbuf_len 0: same result", c->name);
    check(buf[0] == GUARD, "errbuf_len 0: nothing written", c->name);

    memset(buf, GUARD, sizeof buf);
    check(c->call(c, buf, 1) == c->want, "errbuf_len 1: same result", c->name);
    check(buf[0] == '\0' && buf[1] == GUARD, "errbuf_len 1: just the terminator", c->name);

    cut = len < 7 ? len : 7;
    memset(buf, GUARD, sizeof buf);
    check(c->call(c, buf, 8) == c->want, "errbuf_len 8: same result", c->name);
    check(strlen(buf) == cut && strncmp(buf, full, cut) == 0 && buf[8] == GUARD,
          "errbuf_len 8: the message's first 7 bytes and the terminator, nothing past", c->name);

    /* Exactly the message and its terminator fits; one byte less loses the message's last byte. */
    memset(buf, GUARD, sizeof buf);
    (void)c->call(c, buf, len + 1);
    check(strcmp(buf, full) == 0 && buf[len + 1] == GUARD, "errbuf_len = length + 1: the whole message", c->name);
    memset(buf, GUARD, sizeof buf);
    (void)c->call(c, buf, len);
    check(strlen(buf) == len - 1 && strncmp(buf, full, len - 1) == 0 && buf[len] == GUARD,
          "errbuf_len = length: all but the last byte", c->name);
    return len;
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data;
    long n;
    if (f == NULL) {
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    data = malloc((size_t)n);
    if (data != NULL && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return data;
}

int main(int argc, char **argv)
{
    static const char not_pem[] = "this is not PEM";
    static const char bad_base64[] = "-----BEGIN CERTIFICATE-----\n@@@@ not base64 @@@@\n-----END CERTIFICATE-----\n";
    static const char unknown_key[] = "no.such.key";
    uint8_t key31[31];
    uint8_t key32[32];
    uint8_t key33[33];
    kedge_config *cfg = NULL;
    char buf[BUF];
    uint8_t *pem;
    size_t pem_len = 0;
    size_t i;

    memset(key31, 'K', sizeof key31);
    memset(key32, 'K', sizeof key32);
    memset(key33, 'K', sizeof key33);
    if (argc < 2 || kedge_config_new(&cfg) != KEDGE_OK) {
        printf("usage: config_errbuf PEM_FILE\n");
        return 2;
    }

    {
        const struct failing_call calls[] = {
            /* the reference the other two must match */
            {"kedge_config_set(config NULL)", KEDGE_NULL_PARAMETER, "config", call_set, NULL,
             (const uint8_t *)unknown_key, 0},
            {"kedge_config_set(unknown key)", KEDGE_CONFIG_UNKNOWN_KEY, unknown_key, call_set, cfg,
             (const uint8_t *)unknown_key, 0},
            {"kedge_config_set_ca_pem(config NULL)", KEDGE_NULL_PARAMETER, "config", call_ca_pem, NULL,
             (const uint8_t *)not_pem, sizeof not_pem - 1},
            {"kedge_config_set_ca_pem(pem NULL)", KEDGE_NULL_PARAMETER, "pem", call_ca_pem, cfg, NULL, 10},
            {"kedge_config_set_ca_pem(not PEM)", KEDGE_TLS_CONFIG, "PEM", call_ca_pem, cfg,
             (const uint8_t *)not_pem, sizeof not_pem - 1},
            {"kedge_config_set_ca_pem(length 0)", KEDGE_TLS_CONFIG, "PEM", call_ca_pem, cfg,
             (const uint8_t *)not_pem, 0},
            {"kedge_config_set_ca_pem(bad base64)", KEDGE_TLS_CONFIG, "PEM", call_ca_pem, cfg,
             (const uint8_t *)bad_base64, sizeof bad_base64 - 1},
            {"kedge_config_set_spool_key(config NULL)", KEDGE_NULL_PARAMETER, "config", call_spool_key, NULL, key32,
             sizeof key32},
            {"kedge_config_set_spool_key(key NULL)", KEDGE_NULL_PARAMETER, "key", call_spool_key, cfg, NULL, 32},
            {"kedge_config_set_spool_key(31 bytes)", KEDGE_INVALID_ARGUMENT, "32 bytes", call_spool_key, cfg, key31,
             sizeof key31},
            {"kedge_config_set_spool_key(33 bytes)", KEDGE_INVALID_ARGUMENT, "32 bytes", call_spool_key, cfg, key33,
             sizeof key33},
            {"kedge_config_set_spool_key(0 bytes)", KEDGE_INVALID_ARGUMENT, "32 bytes", call_spool_key, cfg, key32, 0},
        };
        for (i = 0; i < sizeof calls / sizeof calls[0]; i++) {
            check_errbuf_contract(&calls[i]);
        }
        for (i = 0; i < sizeof calls / sizeof calls[0]; i++) {
            if (calls[i].call == call_spool_key) {
                memset(buf, GUARD, sizeof buf);
                (void)calls[i].call(&calls[i], buf, sizeof buf);
                check(strstr(buf, "KKKK") == NULL, "the message does not show the key", calls[i].name);
            }
        }
    }

    /* Success writes nothing, as with kedge_config_set. */
    memset(buf, GUARD, sizeof buf);
    check(kedge_config_set(cfg, "log.level", "DEBUG", buf, sizeof buf) == KEDGE_OK && buf[0] == GUARD,
          "KEDGE_OK and errbuf untouched", "kedge_config_set(log.level)");
    memset(buf, GUARD, sizeof buf);
    check(kedge_config_set_spool_key(cfg, key32, sizeof key32, buf, sizeof buf) == KEDGE_OK && buf[0] == GUARD,
          "KEDGE_OK and errbuf untouched", "kedge_config_set_spool_key(32 bytes)");
    pem = read_file(argv[1], &pem_len);
    check(pem != NULL, "the PEM file is readable", argv[1]);
    if (pem != NULL) {
        memset(buf, GUARD, sizeof buf);
        check(kedge_config_set_ca_pem(cfg, pem, pem_len, buf, sizeof buf) == KEDGE_OK && buf[0] == GUARD,
              "KEDGE_OK and errbuf untouched", "kedge_config_set_ca_pem(a certificate)");
        free(pem);
    }

    kedge_config_free(cfg);
    printf("%u passed, %u failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

/* DRAFT CONTRACT: hand-written so C work can start; replaced by cbindgen output with the same names. */
#ifndef KUSTO_EDGE_H
#define KUSTO_EDGE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Result codes: fixed numbers, never reused. */
typedef enum kedge_result {
  KEDGE_OK = 0,
  KEDGE_NULL_PARAMETER = 1,
  KEDGE_INVALID_ARGUMENT = 2,       /* a string is not UTF-8, a value out of range */
  KEDGE_CONFIG_UNKNOWN_KEY = 3,
  KEDGE_CONFIG_INVALID_VALUE = 4,
  KEDGE_CONFIG_INCOMPLETE = 5,      /* kedge_client_new: e.g. no "url" */
  KEDGE_INSECURE_TRANSPORT = 6,     /* plain http not allowed for this host */
  KEDGE_TLS_CONFIG = 7,             /* CA file unreadable or no certificate in it */
  KEDGE_INVALID_DESTINATION = 8,
  KEDGE_TOO_MANY_DESTINATIONS = 9,
  KEDGE_RECORD_TOO_LARGE = 10,
  KEDGE_INVALID_RECORD = 11,        /* empty, not UTF-8, line break inside a json line record */
  KEDGE_TRANSIENT_FAILURE = 12,     /* retries ran out; the batch is kept; try again later */
  KEDGE_BACKING_OFF = 13,           /* destination is backing off after failures; the batch is kept */
  KEDGE_DATA_REJECTED = 14,         /* the service refused the data permanently */
  KEDGE_TARGET_NOT_READY = 15,      /* table/database missing, streaming off, 404 */
  KEDGE_AUTH_REFUSED = 16,          /* 401/403 */
  KEDGE_SPOOL_FULL = 17,
  KEDGE_SPOOL_IO = 18,
  KEDGE_REENTRANT_CALL = 19,       /* a client function called from inside its own callback */
  KEDGE_INTERNAL = 98,
  KEDGE_PANIC = 99,
} kedge_result;

typedef enum kedge_log_level {
  KEDGE_LOG_ERROR = 1,
  KEDGE_LOG_WARN = 2,
  KEDGE_LOG_INFO = 3,
  KEDGE_LOG_DEBUG = 4,
} kedge_log_level;

typedef enum kedge_outcome {
  KEDGE_OUTCOME_ACKNOWLEDGED = 0,   /* service answered 200 */
  KEDGE_OUTCOME_REJECTED = 1,       /* data refused permanently, dropped (or quarantined) */
  KEDGE_OUTCOME_FAILED = 2,         /* transient/target not ready: kept for retry */
} kedge_outcome;

typedef struct kedge_config kedge_config;   /* opaque */
typedef struct kedge_client kedge_client;   /* opaque */

typedef struct kedge_delivery_report {
  uint32_t destination;
  const char *chunk_id;       /* 36-char UUID, NUL-terminated, valid during the callback */
  uint64_t records;
  uint64_t raw_bytes;
  uint64_t wire_bytes;
  kedge_outcome outcome;
  kedge_result result;
  uint16_t http_status;       /* 0 when no HTTP answer */
  const char *message;        /* NUL-terminated, valid during the callback */
} kedge_delivery_report;

typedef struct kedge_stats {
  uint64_t records_appended;
  uint64_t bytes_appended;       /* raw */
  uint64_t records_sent;         /* records in requests that were sent (any answer) */
  uint64_t bytes_sent_raw;
  uint64_t bytes_sent_wire;      /* gzip bodies */
  uint64_t records_acknowledged;
  uint64_t chunks_acknowledged;
  uint64_t records_rejected;
  uint64_t requests;
  uint64_t retries;
  uint64_t failures;             /* requests that failed (any class) */
  uint64_t records_buffered;     /* in RAM now */
  uint32_t last_http_status;
  uint32_t destinations;
} kedge_stats;

typedef void (*kedge_log_callback)(void *userdata, kedge_log_level level, const char *message);
typedef void (*kedge_delivery_callback)(void *userdata, const kedge_delivery_report *report);

const char *kedge_version(void);
const char *kedge_result_str(kedge_result result);   /* never NULL */

kedge_result kedge_config_new(kedge_config **out_config);
void kedge_config_free(kedge_config *config);
/* String key/value settings, see README "Configuration keys". errbuf may be NULL. */
kedge_result kedge_config_set(kedge_config *config, const char *key, const char *value,
                              char *errbuf, size_t errbuf_len);
kedge_result kedge_config_set_ca_pem(kedge_config *config, const uint8_t *pem, size_t pem_len);
kedge_result kedge_config_set_log_callback(kedge_config *config, kedge_log_callback callback, void *userdata);
kedge_result kedge_config_set_delivery_callback(kedge_config *config, kedge_delivery_callback callback, void *userdata);
kedge_result kedge_config_memory_bound(const kedge_config *config, uint64_t *out_bytes);

kedge_result kedge_client_new(const kedge_config *config, kedge_client **out_client,
                              char *errbuf, size_t errbuf_len);
void kedge_client_free(kedge_client *client);
kedge_result kedge_client_add_destination(kedge_client *client, const char *database, const char *table,
                                          const char *format, const char *mapping /* NULL: none */,
                                          uint32_t *out_destination);
kedge_result kedge_append(kedge_client *client, uint32_t destination, const uint8_t *record, size_t record_len);
kedge_result kedge_flush(kedge_client *client);
/* Sends batches older than batch.max_age_ms and retries destinations whose backoff ran out.
   out_next_ms (may be NULL): milliseconds until the next poll has work. */
kedge_result kedge_poll(kedge_client *client, uint32_t *out_next_ms);
kedge_result kedge_client_stats(const kedge_client *client, kedge_stats *out_stats);
/* Copies the last error message (NUL-terminated, truncated to fit); out_len (may be NULL) gets its full length. */
kedge_result kedge_client_last_error(const kedge_client *client, char *buf, size_t buf_len, size_t *out_len);

#endif

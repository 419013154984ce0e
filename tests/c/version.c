/*
 * version: the header's KEDGE_VERSION_* macros are the version of the library it is linked with, as
 * kedge_version() reports it, and they work in preprocessor conditionals (a firmware build can require a version).
 *
 * Prints "FAIL: ..." per failed check and a last line "N passed, M failed"; exits 0 only when M is 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kusto_edge.h"

#if !defined(KEDGE_VERSION_MAJOR) || !defined(KEDGE_VERSION_MINOR) || !defined(KEDGE_VERSION_PATCH) || \
    !defined(KEDGE_VERSION_STRING)
#error "kusto_edge.h does not define KEDGE_VERSION_MAJOR, _MINOR, _PATCH and _STRING"
#endif

/* Integers the preprocessor can compare, as a version requirement would. */
#if KEDGE_VERSION_MAJOR < 0 || KEDGE_VERSION_MINOR < 0 || KEDGE_VERSION_PATCH < 0
#error "KEDGE_VERSION_* are not non-negative integers"
#endif

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

/* Reads a decimal number at *s and moves past it; -1 if there is none. */
static long number(const char **s)
{
    char *end;
    long n;
    if (**s < '0' || **s > '9') {
        return -1;
    }
    n = strtol(*s, &end, 10);
    *s = end;
    return n;
}

int main(void)
{
    const char *v = kedge_version();
    const char *p = v;
    long major;
    long minor;
    long patch;
    char built[64];

    check(v != NULL, "kedge_version() is not NULL");
    if (v == NULL) {
        printf("%u passed, %u failed\n", passed, failed);
        return 1;
    }
    printf("header %s, library %s\n", KEDGE_VERSION_STRING, v);
    check(strcmp(v, KEDGE_VERSION_STRING) == 0, "KEDGE_VERSION_STRING is kedge_version()");

    major = number(&p);
    check(*p == '.', "kedge_version() has a '.' after the major version");
    p += *p == '.';
    minor = number(&p);
    check(*p == '.', "kedge_version() has a '.' after the minor version");
    p += *p == '.';
    patch = number(&p);
    /* A pre-release or build suffix may follow (Cargo: 1.2.3-rc.1, 1.2.3+meta). */
    check(*p == '\0' || *p == '-' || *p == '+', "kedge_version() is MAJOR.MINOR.PATCH[-pre][+build]");
    check(major == KEDGE_VERSION_MAJOR, "KEDGE_VERSION_MAJOR is kedge_version()'s major version");
    check(minor == KEDGE_VERSION_MINOR, "KEDGE_VERSION_MINOR is kedge_version()'s minor version");
    check(patch == KEDGE_VERSION_PATCH, "KEDGE_VERSION_PATCH is kedge_version()'s patch version");

    snprintf(built, sizeof built, "%d.%d.%d", KEDGE_VERSION_MAJOR, KEDGE_VERSION_MINOR, KEDGE_VERSION_PATCH);
    check(strncmp(KEDGE_VERSION_STRING, built, strlen(built)) == 0,
          "KEDGE_VERSION_STRING starts with MAJOR.MINOR.PATCH");

    printf("%u passed, %u failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

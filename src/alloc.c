/*
 * alloc.c — every allocation of the library goes through here, so that the
 * tests can make the Nth one fail (as jansson's and SQLite's test suites
 * do) and prove that each failure is an ES_ENOMEM with nothing written and
 * nothing leaked.  In normal use this is malloc with one relaxed atomic load.
 */
#include "internal.h"

#include <stdlib.h>

/* Allocations left before the injected failure; negative: never fail. */
static _Atomic long fail_countdown = -1;
static _Atomic unsigned long alloc_count;

void es__alloc_fail_after(long n)
{
    atomic_store(&alloc_count, 0);
    atomic_store(&fail_countdown, n);
}

unsigned long es__alloc_count(void)
{
    return atomic_load(&alloc_count);
}

static bool inject(void)
{
    atomic_fetch_add_explicit(&alloc_count, 1, memory_order_relaxed);
    if (atomic_load_explicit(&fail_countdown, memory_order_relaxed) < 0)
        return false;
    /* Exactly one allocation fails: the one that takes the count to -1. */
    return atomic_fetch_sub(&fail_countdown, 1) == 0;
}

void *es__malloc(size_t n)
{
    return inject() ? NULL : malloc(n);
}

void *es__calloc(size_t n, size_t size)
{
    return inject() ? NULL : calloc(n, size);
}

void *es__realloc(void *p, size_t n)
{
    return inject() ? NULL : realloc(p, n);
}

char *es__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = es__malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

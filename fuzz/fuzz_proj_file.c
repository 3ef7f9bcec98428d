/*
 * fuzz_proj_file.c — libFuzzer target for the projection-file parser
 * (es_proj_file_parse): directives, sections, the SQL lexer that splits
 * statements and turns :parameters into placeholders.  Nothing runs SQL.
 * Any input must give 0 or ES_EINVAL (ES_ENOMEM only when memory runs out),
 * never a crash, a leak or a read past the input; a parsed file has a
 * valid projection definition and an error names the file.
 */
#include <eventsrc_project.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size copy, so that a read past the input is caught */
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    if (size)
        memcpy(text, data, size);
    es_proj_file *f = NULL;
    int rc = es_proj_file_parse(&f, "fuzz.proj", text, size);
    if (rc == 0) {
        const es_proj_def *d = es_proj_file_def(f);
        if (!f || !d || !d->name || !d->definition || !d->apply || !d->setup)
            abort();
    } else if (rc != ES_EINVAL && rc != ES_ENOMEM) {
        abort();
    } else if (f || (rc == ES_EINVAL && strncmp(es_proj_error_last(), "fuzz.proj", 9) != 0)) {
        abort();
    }
    es_proj_file_free(f);
    free(text);
    return 0;
}

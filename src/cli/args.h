/*
 * args.h — the esrc CLI's parsers of argument and acknowledgement text:
 * pure functions (no printing, no store), so that the fuzz targets can
 * drive them and the commands share one definition of a number or a time.
 */
#ifndef ESRC_ARGS_H
#define ESRC_ARGS_H

#include <eventsrc.h>

#include <stdint.h>

/** A non-negative decimal integer: digits only (no sign, no blanks), no
 *  overflow.  @return 0, or -1 when it is not one. */
int esrc_parse_u64(uint64_t *out, const char *s);

/** A time as µs since 1970 (digits) or an ISO 8601 UTC time,
 *  YYYY-MM-DDTHH:MM:SS[.ffffff]Z, years 1970..9999.  @return 0 or -1. */
int esrc_parse_time(int64_t *out, const char *s);

/* Why esrc_parse_start refused a text. */
#define ESRC_START_NOT_ONE 1  /* none of the four forms */
#define ESRC_START_POSITION 2 /* a number, but no position (0, or 2^62 and up) */
#define ESRC_START_TIME 3     /* '@' and no time after it */

/** A subscription start: beginning | end | POSITION | @TIME.
 *  @return 0, or an ESRC_START_* reason. */
int esrc_parse_start(es_sub_start *start, uint64_t *position, int64_t *time_us, const char *s);

/** An acknowledgement line (blanks around it are ignored; the line is
 *  trimmed in place): POSITION, or `fail POSITION [MESSAGE]` for an event the
 *  reader could not handle.  @return 1 with *out set, 2 with *out and
 *  *fail_msg (pointing into line; "" when none) for a failure, 0 for a blank
 *  line, -1 when it is neither. */
int esrc_parse_ack_line(uint64_t *out, const char **fail_msg, char *line);

#endif

/*
 * project_int.h — what the projection library's files share.
 */
#ifndef ES_PROJECT_INT_H
#define ES_PROJECT_INT_H

#include <eventsrc_project.h>

/* Clear the thread's last message (at the start of each public call). */
void es_proj__clear_error(void);

/* Set the message and return code (for `return es_proj__err(ES_EINVAL, …)`). */
int es_proj__err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif

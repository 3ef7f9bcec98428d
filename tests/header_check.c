/* The public header compiles alone under -std=c11 -pedantic -Werror. */
#include "eventsrc.h"

int es_header_check_dummy(void);
int es_header_check_dummy(void)
{
    return ES_OK + ES_VERSION_NUMBER * 0;
}

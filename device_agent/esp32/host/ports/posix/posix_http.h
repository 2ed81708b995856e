/* The posix HTTP port: libcurl, GET with a Range request when resuming. */
#ifndef FLEET_OTA_POSIX_HTTP_H
#define FLEET_OTA_POSIX_HTTP_H

#include "fleet_ota/port.h"

typedef struct {
    const char *ca_file;    /* NULL: the system's CAs */
    long connect_timeout_s; /* to connect */
    long stall_timeout_s;   /* download_timeout when no byte arrives for this long */
    long deadline_s;        /* download_timeout when the whole body takes longer */
} fo_posix_http_t;

fo_code_t fo_posix_http_init(fo_posix_http_t *http, fo_http_port_t *port);

#endif

/* The posix storage port: files stand for the flash slots and NVS records.
 *   <dir>/slots/<model>.<a|b>   a model slot (capacity `slot_capacity` bytes)
 *   <dir>/<name>.rec            a record, replaced atomically (temp, fsync, rename, fsync dir)
 */
#ifndef FLEET_OTA_POSIX_STORAGE_H
#define FLEET_OTA_POSIX_STORAGE_H

#include <stdint.h>

#include "fleet_ota/port.h"

typedef struct {
    char dir[256];
    uint64_t slot_capacity;
    int fd; /* the slot open for writing, -1 for none */
    /* Skip fsync: only for tests whose power cuts are simulated above this port. */
    int no_sync;
} fo_posix_storage_t;

/* Fill `port` with the posix storage calls over `dir` (created if missing). */
fo_code_t fo_posix_storage_init(fo_posix_storage_t *st, const char *dir, uint64_t slot_capacity,
                                fo_storage_port_t *port);

#endif

#define _POSIX_C_SOURCE 200809L
#include "posix_storage.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int slot_path(const fo_posix_storage_t *st, const char *model, int slot, char *out,
                     size_t cap)
{
    int n = snprintf(out, cap, "%s/slots/%s.%c", st->dir, model, slot == 0 ? 'a' : 'b');
    return n > 0 && (size_t)n < cap;
}

static int sync_fd(const fo_posix_storage_t *st, int fd)
{
    return st->no_sync ? 0 : fsync(fd);
}

static int fsync_dir(const fo_posix_storage_t *st, const char *dir)
{
    if (st->no_sync) {
        return 0;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        return -1;
    }
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static fo_code_t slot_open(void *ctx, const char *model, int slot, uint64_t offset,
                           uint64_t length)
{
    fo_posix_storage_t *st = ctx;
    char path[300];
    if (length > st->slot_capacity) {
        return FO_DISK_FULL;
    }
    if (!slot_path(st, model, slot, path, sizeof(path))) {
        return FO_DISK_FULL;
    }
    int fd = open(path, O_WRONLY | O_CREAT | (offset == 0 ? O_TRUNC : 0), 0600);
    if (fd < 0) {
        return FO_DISK_FULL;
    }
    /* What lies beyond the checkpoint was never counted: cut it off. */
    if (ftruncate(fd, (off_t)offset) != 0 || lseek(fd, (off_t)offset, SEEK_SET) < 0) {
        close(fd);
        return FO_DISK_FULL;
    }
    st->fd = fd;
    return FO_OK;
}

static fo_code_t slot_write(void *ctx, const uint8_t *data, size_t len)
{
    fo_posix_storage_t *st = ctx;
    while (len > 0) {
        ssize_t n = write(st->fd, data, len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return FO_DISK_FULL;
        }
        data += n;
        len -= (size_t)n;
    }
    return FO_OK;
}

static fo_code_t slot_close(void *ctx)
{
    fo_posix_storage_t *st = ctx;
    if (st->fd < 0) {
        return FO_OK;
    }
    int rc = sync_fd(st, st->fd);
    rc |= close(st->fd);
    st->fd = -1;
    return rc == 0 ? FO_OK : FO_DISK_FULL;
}

static fo_code_t slot_read(void *ctx, const char *model, int slot, uint64_t offset, uint8_t *buf,
                           size_t len)
{
    fo_posix_storage_t *st = ctx;
    char path[300];
    if (!slot_path(st, model, slot, path, sizeof(path))) {
        return FO_HASH_MISMATCH;
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        return FO_HASH_MISMATCH; /* nothing there: the bytes cannot match */
    }
    ssize_t n = pread(fd, buf, len, (off_t)offset);
    close(fd);
    return n == (ssize_t)len ? FO_OK : FO_HASH_MISMATCH;
}

static fo_code_t record_load(void *ctx, const char *name, uint8_t *buf, size_t cap, size_t *len)
{
    fo_posix_storage_t *st = ctx;
    char path[300];
    snprintf(path, sizeof(path), "%s/%s.rec", st->dir, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return errno == ENOENT ? FO_NOT_FOUND : FO_MALFORMED;
    }
    size_t n = fread(buf, 1, cap, f);
    int more = fgetc(f) != EOF;
    fclose(f);
    if (more) {
        return FO_MALFORMED;
    }
    *len = n;
    return FO_OK;
}

static fo_code_t record_save(void *ctx, const char *name, const uint8_t *buf, size_t len)
{
    fo_posix_storage_t *st = ctx;
    char path[300], tmp[310];
    snprintf(path, sizeof(path), "%s/%s.rec", st->dir, name);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        return FO_DISK_FULL;
    }
    int ok = 1;
    for (size_t off = 0; ok && off < len;) {
        ssize_t n = write(fd, buf + off, len - off);
        ok = n > 0;
        off += ok ? (size_t)n : 0;
    }
    ok = ok && sync_fd(st, fd) == 0;
    ok = close(fd) == 0 && ok;
    ok = ok && rename(tmp, path) == 0 && fsync_dir(st, st->dir) == 0;
    return ok ? FO_OK : FO_DISK_FULL;
}

fo_code_t fo_posix_storage_init(fo_posix_storage_t *st, const char *dir, uint64_t slot_capacity,
                                fo_storage_port_t *port)
{
    char slots[300];
    memset(st, 0, sizeof(*st));
    snprintf(st->dir, sizeof(st->dir), "%s", dir);
    st->slot_capacity = slot_capacity;
    st->fd = -1;
    snprintf(slots, sizeof(slots), "%s/slots", dir);
    if ((mkdir(dir, 0700) != 0 && errno != EEXIST) ||
        (mkdir(slots, 0700) != 0 && errno != EEXIST)) {
        return FO_DISK_FULL;
    }
    port->slot_open = slot_open;
    port->slot_write = slot_write;
    port->slot_close = slot_close;
    port->slot_read = slot_read;
    port->record_load = record_load;
    port->record_save = record_save;
    port->ctx = st;
    return FO_OK;
}

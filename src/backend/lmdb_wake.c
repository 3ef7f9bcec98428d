/*
 * lmdb_wake.c — waking readers of an lmdb store when a writer commits, in
 * this process or in any other.
 *
 * LMDB has no notification of its own: a reader learns of a commit only by
 * starting a new read transaction.  Polling the log's last position costs a
 * read transaction per tick and still answers late by half a tick on
 * average.  Instead every store directory holds a small file,
 * `eventsrc-wake`, whose first 32-bit word is a sequence number.  Each
 * process maps it MAP_SHARED, so all of them see the same physical page:
 *
 *   writer, after mdb_txn_commit succeeded:
 *       atomically increment the word; futex(FUTEX_WAKE, all)
 *   waiter (es_log_wait):
 *       seen = the word; if the log's last position > after: done;
 *       futex(FUTEX_WAIT, seen, slice); again
 *
 * Why a futex on a shared file mapping: the kernel keys a shared (not
 * FUTEX_PRIVATE) futex by the file's inode and the offset in it, so a wake
 * in one process reaches waiters in every process that mapped the file, at
 * the cost of one system call per commit and with no thread, socket or
 * daemon to keep.  FUTEX_WAIT sleeps only while the word still holds
 * `seen`: a commit between the waiter's read of the word and its sleep
 * changes the word, so the wait returns at once — no wake-up is lost.  (The
 * commit is visible to any read transaction begun after it; the word is
 * bumped after it, so a waiter that sees the new word also sees the events.)
 *
 * Alternatives weighed: a named pipe or a Unix socket needs someone to hold
 * it open and fans out badly to many readers; inotify on data.mdb fires per
 * page written rather than per commit, and not at all for writes through a
 * map (MDB_WRITEMAP); a process-shared condition variable in a shared file
 * needs a mutex that a process dying inside it leaves to be repaired.  A
 * futex word holds no lock: a process that dies at any moment leaves
 * nothing to clean up.
 *
 * Limits.  Same machine only — as for LMDB itself, whose lock file is also a
 * shared mapping.  A writer that does not bump the word (an older eventsrc,
 * a plain LMDB tool) or a word that could not be mapped (a read-only
 * directory without the file, a full disk) is covered by the waiter's
 * bounded re-check (see lm_wait in lmdb.c): such a commit is seen within
 * that interval, not at once.  The word wraps after 2^32 commits; a waiter
 * would have to sleep through exactly that many to miss one, and the
 * re-check bounds even that.
 */
#define _GNU_SOURCE
#include "lmdb_wake.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

/* The file's size: the word, and room to add fields later. */
#define WAKE_SIZE 64

#ifdef __linux__

uint32_t *es__wake_map(const char *dir, bool may_create)
{
    char f[4200];
    struct stat sb;
    bool writable = true;
    void *p = MAP_FAILED;
    int fd = -1;
    if (snprintf(f, sizeof f, "%s/%s", dir, ES__WAKE_FILE) >= (int)sizeof f)
        return NULL;
    fd = open(f, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (may_create ? O_CREAT : 0), 0644);
    if (fd < 0 && (errno == EACCES || errno == EROFS || errno == EPERM || errno == ENOENT)) {
        /* a read-only store: wait on the writers' word if they made one */
        writable = false;
        fd = open(f, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    }
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        goto done;
    if (sb.st_size < WAKE_SIZE) {
        /* Real blocks, not a sparse tail: a store through a shared map into
         * a hole is a SIGBUS when the disk is full.  Never shrinks, so two
         * processes creating the file at once agree. */
        if (!writable)
            goto done;
        int err = posix_fallocate(fd, 0, WAKE_SIZE);
        if ((err == EOPNOTSUPP || err == EINVAL) && ftruncate(fd, WAKE_SIZE) == 0)
            err = 0;
        if (err)
            goto done;
    }
    p = mmap(NULL, WAKE_SIZE, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED, fd, 0);
done:
    if (fd >= 0)
        close(fd);
    return p == MAP_FAILED ? NULL : p;
}

void es__wake_unmap(uint32_t *word)
{
    if (word)
        munmap(word, WAKE_SIZE);
}

void es__wake_bump(uint32_t *word)
{
    if (!word)
        return;
    __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
    syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

uint32_t es__wake_seen(const uint32_t *word)
{
    return word ? __atomic_load_n(word, __ATOMIC_SEQ_CST) : 0;
}

void es__wake_sleep(uint32_t *word, uint32_t seen, int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    if (ms <= 0)
        return;
    if (word && syscall(SYS_futex, word, FUTEX_WAIT, seen, &ts, NULL, 0) == 0)
        return;
    /* moved already, timed out or interrupted: the caller re-checks */
    if (word && (errno == EAGAIN || errno == ETIMEDOUT || errno == EINTR))
        return;
    nanosleep(&ts, NULL); /* no word, or a kernel that refuses this one */
}

#else /* no futex: waiters poll */

uint32_t *es__wake_map(const char *dir, bool may_create)
{
    (void)dir, (void)may_create;
    return NULL;
}

void es__wake_unmap(uint32_t *word)
{
    (void)word;
}

void es__wake_bump(uint32_t *word)
{
    (void)word;
}

uint32_t es__wake_seen(const uint32_t *word)
{
    (void)word;
    return 0;
}

void es__wake_sleep(uint32_t *word, uint32_t seen, int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    (void)word, (void)seen;
    if (ms > 0)
        nanosleep(&ts, NULL);
}

#endif

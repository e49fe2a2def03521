/* aio.c: the blocking-work pool (design §1).
 *
 * A few pthreads take jobs from one mutex+condvar queue and run work(arg).
 * Finished jobs go on a completed list; the first one to land on an empty
 * list writes the eventfd, whose persistent EV_READ event runs on the reactor,
 * drains the list and calls done(arg, cancelled). Workers never call libevent:
 * the eventfd write is their only contact with the reactor.
 *
 * Ownership: a job belongs to the pool from aio_submit() until its done()
 * returns; then the pool frees it, so the handle must not be used after
 * done() has run. arg always belongs to the submitter (done() frees it). */
#include "store/store.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/xmalloc.h"

#define AIO_MAX_THREADS 16
#define AIO_DEFAULT_THREADS 2

enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_COMPLETED };

struct aio_job {
	struct aio_job *next;        /* link in a->queue or a->completed */
	struct aio *a;
	aio_work_fn work;
	aio_done_fn done;
	void *arg;                   /* the submitter's */
	enum job_state state;        /* under a->mu */
	bool cancelled;              /* under a->mu */
};

struct jobq {
	struct aio_job *head, *tail;
};

struct aio {
	struct event_base *base;
	struct event *ev;            /* EV_READ|EV_PERSIST on efd, reactor side */
	int efd;                     /* eventfd: "completed list became non-empty" */
	pthread_mutex_t mu;
	pthread_cond_t cv;           /* queue non-empty or stopping */
	struct jobq queue;           /* waiting for a worker (under mu) */
	struct jobq completed;       /* waiting for done() (under mu) */
	bool stopping;               /* under mu */
	pthread_t *threads;
	int nthreads;
	size_t pending;              /* submitted, done() not yet called; reactor only */
};

static void jobq_push(struct jobq *q, struct aio_job *j)
{
	j->next = NULL;
	if (q->tail != NULL)
		q->tail->next = j;
	else
		q->head = j;
	q->tail = j;
}

static struct aio_job *jobq_pop(struct jobq *q)
{
	struct aio_job *j = q->head;
	if (j != NULL) {
		q->head = j->next;
		if (q->head == NULL)
			q->tail = NULL;
		j->next = NULL;
	}
	return j;
}

/* O(n) walk: cancelling a queued job is rare next to submitting one. */
static void jobq_remove(struct jobq *q, struct aio_job *j)
{
	struct aio_job *prev = NULL;
	for (struct aio_job *c = q->head; c != NULL; prev = c, c = c->next) {
		if (c != j)
			continue;
		if (prev != NULL)
			prev->next = c->next;
		else
			q->head = c->next;
		if (q->tail == c)
			q->tail = prev;
		c->next = NULL;
		return;
	}
}

static struct aio_job *jobq_take_all(struct jobq *q)
{
	struct aio_job *j = q->head;
	q->head = q->tail = NULL;
	return j;
}

/* Caller holds a->mu. Only the empty -> non-empty transition wakes the
 * reactor; it reads the eventfd before taking the list, so no wakeup is lost. */
static void complete_locked(struct aio *a, struct aio_job *j)
{
	bool was_empty = a->completed.head == NULL;
	j->state = JOB_COMPLETED;
	jobq_push(&a->completed, j);
	if (was_empty) {
		uint64_t one = 1;
		/* EAGAIN only if the counter would overflow: a wakeup is pending anyway */
		ssize_t n = write(a->efd, &one, sizeof(one));
		(void)n;
	}
}

static void *worker_main(void *p)
{
	struct aio *a = p;

	pthread_mutex_lock(&a->mu);
	for (;;) {
		while (a->queue.head == NULL && !a->stopping)
			pthread_cond_wait(&a->cv, &a->mu);
		if (a->stopping)
			break;
		struct aio_job *j = jobq_pop(&a->queue);
		j->state = JOB_RUNNING;
		pthread_mutex_unlock(&a->mu);
		j->work(j->arg);
		pthread_mutex_lock(&a->mu);
		complete_locked(a, j);
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

/* Reactor side: call done() for a detached list, freeing each job after. */
static void run_done_list(struct aio *a, struct aio_job *j)
{
	while (j != NULL) {
		struct aio_job *next = j->next;
		pthread_mutex_lock(&a->mu);
		bool cancelled = j->cancelled;
		pthread_mutex_unlock(&a->mu);
		a->pending--;
		j->done(j->arg, cancelled);
		free(j);
		j = next;
	}
}

static struct aio_job *take_completed(struct aio *a)
{
	pthread_mutex_lock(&a->mu);
	struct aio_job *list = jobq_take_all(&a->completed);
	pthread_mutex_unlock(&a->mu);
	return list;
}

static void aio_on_ready(evutil_socket_t fd, short what, void *p)
{
	struct aio *a = p;
	uint64_t count;

	/* drain first, then take the list (see complete_locked) */
	ssize_t n = read(a->efd, &count, sizeof(count));
	(void)n;
	run_done_list(a, take_completed(a));
}

/* Workers start with every signal blocked so that signals reach the reactor
 * thread (evsignal) and never interrupt a worker's syscalls. */
static int start_threads(struct aio *a, int want)
{
	sigset_t all, old;
	int err = 0;

	a->threads = xreallocarray(NULL, (size_t)want, sizeof(*a->threads));
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	for (a->nthreads = 0; a->nthreads < want; a->nthreads++) {
		err = pthread_create(&a->threads[a->nthreads], NULL, worker_main, a);
		if (err != 0)
			break;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	return err;
}

static void stop_threads(struct aio *a)
{
	pthread_mutex_lock(&a->mu);
	a->stopping = true;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
	for (int i = 0; i < a->nthreads; i++)
		pthread_join(a->threads[i], NULL);
	a->nthreads = 0;
}

static void aio_release(struct aio *a)
{
	if (a->ev != NULL)
		event_free(a->ev);
	if (a->efd != -1)
		close(a->efd);
	pthread_mutex_destroy(&a->mu);
	pthread_cond_destroy(&a->cv);
	free(a->threads);
	free(a);
}

struct aio *aio_new(struct event_base *base, int nthreads)
{
	if (nthreads < 1)
		nthreads = AIO_DEFAULT_THREADS;
	if (nthreads > AIO_MAX_THREADS)
		nthreads = AIO_MAX_THREADS;

	struct aio *a = xcalloc(1, sizeof(*a));
	a->base = base;
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->cv, NULL);
	a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (a->efd == -1)
		goto fail;
	a->ev = event_new(base, a->efd, EV_READ | EV_PERSIST, aio_on_ready, a);
	if (a->ev == NULL || event_add(a->ev, NULL) == -1) {
		errno = ENOMEM;
		goto fail;
	}
	int err = start_threads(a, nthreads);
	if (err != 0) {
		stop_threads(a);
		errno = err;
		goto fail;
	}
	return a;
fail:;
	int saved = errno;
	aio_release(a);
	errno = saved;
	return NULL;
}

struct aio_job *aio_submit(struct aio *a, aio_work_fn work, aio_done_fn done, void *arg)
{
	struct aio_job *j = xcalloc(1, sizeof(*j));
	j->a = a;
	j->work = work;
	j->done = done;
	j->arg = arg;
	a->pending++;

	pthread_mutex_lock(&a->mu);
	if (a->stopping) {
		/* submitted from a done() inside aio_free(): never runs */
		j->cancelled = true;
		complete_locked(a, j);
	} else {
		j->state = JOB_QUEUED;
		jobq_push(&a->queue, j);
		pthread_cond_signal(&a->cv);
	}
	pthread_mutex_unlock(&a->mu);
	return j;
}

/* A queued job leaves the queue at once and completes without running; a
 * running one finishes its work. Either way done() comes later, from the
 * reactor, with cancelled=true: never from inside this call. */
void aio_cancel(struct aio_job *j)
{
	struct aio *a = j->a;

	pthread_mutex_lock(&a->mu);
	j->cancelled = true;
	if (j->state == JOB_QUEUED) {
		jobq_remove(&a->queue, j);
		complete_locked(a, j);
	}
	pthread_mutex_unlock(&a->mu);
}

size_t aio_pending(const struct aio *a)
{
	return a->pending;
}

/* Loops because a done() may submit again; such jobs complete cancelled. */
void aio_free(struct aio **a_r)
{
	struct aio *a = *a_r;
	if (a == NULL)
		return;
	*a_r = NULL;

	stop_threads(a);
	for (;;) {
		pthread_mutex_lock(&a->mu);
		struct aio_job *j;
		while ((j = jobq_pop(&a->queue)) != NULL)
			complete_locked(a, j);
		for (j = a->completed.head; j != NULL; j = j->next)
			j->cancelled = true;
		struct aio_job *list = jobq_take_all(&a->completed);
		pthread_mutex_unlock(&a->mu);
		if (list == NULL)
			break;
		run_done_list(a, list);
	}
	aio_release(a);
}

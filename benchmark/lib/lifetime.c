// A transparent wrapper around the claude binary, used by the task benchmarks to measure the
// lifetime of the CLI process itself. It runs REAL_CLAUDE with the same argv, environment, cwd
// and stdio, waits for it, and appends one line to LIFETIME_LOG:
//
//   <wrapper main> <before fork> <after exec'd child reaped> <child max RSS KiB> <exit status> <pid> <result> <mirror>
//
// <result> is when the wrapper read the end of the CLI's stream-json `result` line (0 if none):
// <mirror> is 1 when the CLI was given `--session-mirror` (PostgreSQL's transcript mirror), else 0.
// The CLI's stdout goes through the wrapper, which relays each chunk to its own stdout as soon as
// it has read it (a read and a write, microseconds, counted against whoever reads the stream).
//
// Run with an environment lacking REAL_CLAUDE (the manager reads `claude --version` with an empty
// environment, and turns features such as PostgreSQL's `--session-mirror` on by that version) it
// runs the binary it was built for (`-DBUILT_FOR=...`), and without LIFETIME_LOG it only execs it:
// a wrapper that failed `--version` would silently measure another code path than production's.
//
// Times are CLOCK_MONOTONIC nanoseconds, the clock behind Node's process.hrtime.bigint(), so
// they compare directly with timestamps taken in the benchmark process. After the fork the
// wrapper closes its copies of stdin/stderr, and its stdout once the CLI's output ends, so the
// caller sees EOF exactly when the CLI closes them. Signals: SIGTERM/SIGINT/SIGHUP are forwarded to the CLI's process group, which
// is also the wrapper's (the caller made it the group leader).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static unsigned long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static volatile pid_t child = 0;
static void forward(int sig) {
  if (child > 0) kill(child, sig);
}

int main(int argc, char **argv) {
  unsigned long long t_main = now_ns();
  const char *real = getenv("REAL_CLAUDE");
  const char *log = getenv("LIFETIME_LOG");
#ifdef BUILT_FOR
  if (!real) real = BUILT_FOR;
#endif
  if (!real) {
    fprintf(stderr, "lifetime wrapper: REAL_CLAUDE must be set (or the wrapper built with -DBUILT_FOR)\n");
    return 127;
  }
  int mirror = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--session-mirror") == 0) mirror = 1;
  }
  if (!log) {
    argv[0] = (char *)real;
    execv(real, argv);
    return 127;
  }
  signal(SIGTERM, forward);
  signal(SIGINT, forward);
  signal(SIGHUP, forward);
  int out[2];
  if (pipe(out) != 0) return 126;
  unsigned long long t_fork = now_ns();
  pid_t pid = fork();
  if (pid < 0) return 126;
  if (pid == 0) {
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    dup2(out[1], 1);
    close(out[0]);
    close(out[1]);
    argv[0] = (char *)real;
    execv(real, argv);
    _exit(127);
  }
  child = pid;
  close(out[1]);
  int devnull = open("/dev/null", O_RDWR);
  dup2(devnull, 0);
  dup2(devnull, 2);
  // Relay the CLI's stdout, noting when the line holding "type":"result" ends.
  static const char pat[] = "\"type\":\"result\"";
  const size_t plen = sizeof pat - 1;
  size_t at = 0;
  int in_result = 0;
  unsigned long long t_result = 0;
  static char buf[65536];
  for (;;) {
    ssize_t n = read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; i++) {
      char c = buf[i];
      if (c == '\n') {
        if (in_result && t_result == 0) t_result = now_ns();
        in_result = 0;
        at = 0;
        continue;
      }
      if (c == pat[at]) {
        if (++at == plen) {
          in_result = 1;
          at = 0;
        }
      } else {
        at = c == pat[0] ? 1 : 0;
      }
    }
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(1, buf + off, (size_t)(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      off += w;
    }
  }
  close(out[0]);
  dup2(devnull, 1);
  int status = 0;
  struct rusage ru;
  memset(&ru, 0, sizeof ru);
  while (wait4(pid, &status, 0, &ru) < 0 && errno == EINTR) {
  }
  unsigned long long t_end = now_ns();
  char line[256];
  int n = snprintf(line, sizeof line, "%llu %llu %llu %ld %d %d %llu %d\n", t_main, t_fork, t_end, ru.ru_maxrss, status, (int)pid, t_result, mirror);
  int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd >= 0) {
    ssize_t w = write(fd, line, (size_t)n);
    (void)w;
    close(fd);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) {
    signal(WTERMSIG(status), SIG_DFL);
    kill(getpid(), WTERMSIG(status));
  }
  return 128;
}

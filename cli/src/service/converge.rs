//! Waiting for a service to converge after `create`, `scale` and `update`,
//! with progress on stderr, as `docker service create` does unless
//! `--detach`: the command returns once every task the service wants runs
//! and every task it no longer wants is gone.

use std::io::Write;
use std::time::{Duration, Instant};

use vxnet_api::ctl::{self, TaskView};
use vxnet_api::model::{DesiredState, TaskState};
use vxnet_api::{ApiError, ErrorCode};

use crate::dp::CliError;
use crate::swarm::ControlSocket;

/// How long a command waits before it gives up (the service keeps
/// converging without it).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Between two looks.
const POLL: Duration = Duration::from_millis(200);
/// How long every wanted task may stay failed before the wait gives up
/// (a task that can start again does so within this).
const ALL_FAILED_GRACE: Duration = Duration::from_secs(5);

/// Where a service stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Tasks wanted and running.
    pub running: u64,
    /// Tasks the service wants.
    pub desired: u64,
    /// Tasks no longer wanted that have not stopped yet.
    pub leaving: u64,
    /// `TASK on NODE: what went wrong`, for wanted tasks that failed.
    pub failures: Vec<String>,
}

impl Progress {
    /// From `service ps` and the number of tasks the service wants.
    pub fn of(tasks: &[TaskView], desired: u64) -> Progress {
        let wanted = |t: &&TaskView| t.desired == DesiredState::Running;
        let mut p = Progress {
            desired,
            ..Progress::default()
        };
        for t in tasks.iter().filter(wanted) {
            match t.state {
                TaskState::Running => p.running += 1,
                TaskState::Failed => {
                    let why = t.error.clone().unwrap_or_else(|| match t.exit_code {
                        Some(c) => format!("exited with status {c}"),
                        None => "failed".into(),
                    });
                    p.failures.push(format!("{} on {}: {why}", t.name, t.node));
                }
                _ => {}
            }
        }
        p.leaving = tasks
            .iter()
            .filter(|t| t.desired != DesiredState::Running)
            .filter(|t| !matches!(t.state, TaskState::Shutdown | TaskState::Complete))
            .count() as u64;
        p
    }

    pub fn converged(&self) -> bool {
        self.running == self.desired && self.leaving == 0
    }

    /// Every task the service wants has failed: nothing is on its way.
    pub fn all_failed(&self) -> bool {
        self.desired > 0 && self.failures.len() as u64 >= self.desired
    }

    /// The progress line (Docker's wording).
    pub fn line(&self) -> String {
        let mut s = format!(
            "overall progress: {} out of {} tasks",
            self.running, self.desired
        );
        if self.leaving > 0 {
            s.push_str(&format!(", {} stopping", self.leaving));
        }
        s
    }
}

/// Waits until `service` converges, printing each change of its progress
/// and each new task failure to `err`. Fails with a timeout error after
/// `timeout`, saying where the service stands.
pub fn wait(
    socket: &ControlSocket,
    service: &str,
    timeout: Duration,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let start = Instant::now();
    let mut last_line = String::new();
    let mut told: Vec<String> = Vec::new();
    let mut all_failed_since: Option<Instant> = None;
    loop {
        let view = socket.call(ctl::ServiceInspect {
            service: service.to_owned(),
        })?;
        let tasks = socket.call(ctl::ServicePs {
            service: service.to_owned(),
        })?;
        let p = Progress::of(&tasks, view.desired);
        let (converged, line) = (p.converged(), p.line());
        let all_failed = p.all_failed();
        let first_failure = p.failures.first().cloned().unwrap_or_default();
        if line != last_line {
            let _ = writeln!(err, "{service}: {line}");
            last_line = line;
        }
        for f in p.failures {
            if !told.contains(&f) {
                let _ = writeln!(err, "  {f}");
                told.push(f);
            }
        }
        if converged {
            let _ = writeln!(err, "{service}: verify: service converged");
            return Ok(());
        }
        if let Some(e) = &view.schedule_error {
            let f = format!("a task cannot be created: {e}");
            if !told.contains(&f) {
                let _ = writeln!(err, "  {f}");
                told.push(f);
            }
        }
        // Stuck: the tasks that exist have all failed, or the ones still
        // missing cannot be created.
        let all_failed = all_failed || (view.schedule_error.is_some() && p.running < p.desired);
        let first_failure = match (&view.schedule_error, first_failure.is_empty()) {
            (Some(e), true) => format!("a task cannot be created: {e}"),
            _ => first_failure,
        };
        all_failed_since = if all_failed {
            all_failed_since.or(Some(Instant::now()))
        } else {
            None
        };
        if all_failed_since.is_some_and(|t| t.elapsed() >= ALL_FAILED_GRACE) {
            return Err(CliError::Api(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "{service} cannot converge ({first_failure}); the service exists and \
                     keeps trying: fix it with `vxnet service update` or remove it with \
                     `vxnet service rm {service}`"
                ),
            )));
        }
        if start.elapsed() >= timeout {
            return Err(CliError::Api(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "{service} has {} of {} tasks running after {}s; it keeps converging \
                     without this command: see `vxnet service ps {service}` (use --detach \
                     not to wait)",
                    p.running,
                    p.desired,
                    timeout.as_secs()
                ),
            )));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, desired: DesiredState, state: TaskState) -> TaskView {
        TaskView {
            id: name.into(),
            name: name.into(),
            container: format!("{name}.x"),
            node: "host2".into(),
            desired,
            state,
            since: 0,
            exit_code: None,
            error: None,
            restarts: 0,
            addresses: vec![],
        }
    }

    #[test]
    fn converged_when_wanted_tasks_run_and_unwanted_ones_stopped() {
        use DesiredState::*;
        let mut tasks = vec![
            task("web.1", Running, TaskState::Running),
            task("web.2", Running, TaskState::Pending),
            task("web.3", Removed, TaskState::Running),
        ];
        let p = Progress::of(&tasks, 2);
        assert_eq!((p.running, p.desired, p.leaving), (1, 2, 1));
        assert!(!p.converged());
        assert_eq!(p.line(), "overall progress: 1 out of 2 tasks, 1 stopping");
        tasks[1].state = TaskState::Running;
        tasks[2].state = TaskState::Shutdown;
        let p = Progress::of(&tasks, 2);
        assert!(p.converged());
        assert_eq!(p.line(), "overall progress: 2 out of 2 tasks");
    }

    #[test]
    fn failures_say_which_task_where_and_why() {
        let mut t = task("web.1", DesiredState::Running, TaskState::Failed);
        t.exit_code = Some(3);
        let mut u = task("web.2", DesiredState::Running, TaskState::Failed);
        u.error = Some("exec: \"nope\": executable file not found in $PATH".into());
        let p = Progress::of(&[t, u], 2);
        assert_eq!(
            p.failures,
            [
                "web.1 on host2: exited with status 3",
                "web.2 on host2: exec: \"nope\": executable file not found in $PATH"
            ]
        );
        assert!(!p.converged());
        assert!(p.all_failed());
        let one = Progress::of(
            &[task("web.1", DesiredState::Running, TaskState::Running)],
            2,
        );
        assert!(!one.all_failed());
    }
}

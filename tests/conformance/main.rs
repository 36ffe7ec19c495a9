//! One suite every store backend runs: ownership, sessions, leases and fencing, task ends,
//! cleanup, start-fresh, the meter, transcripts (or their absence, by type), the inbox, warm
//! holds, the total cap, spend caps, the event log and branch points. SQLite always runs; PostgreSQL is `#[ignore]`d without a
//! database and runs with `CSM_TEST_DATABASE_URL=postgresql://… cargo test --test conformance --
//! --include-ignored` (each test in a fresh schema, dropped afterwards), as `npm test` and CI do
//! when the URL is set.
//!
//! A third backend is a line at the bottom: `suite!(name, opener)`.

use claude_session_manager::store::Blocking as _;
use claude_session_manager::store::Store;

mod branches;
mod budgets;
mod events;
mod fixtures;
mod inbox;
mod leases;
mod meter;
mod sessions;
mod total_cap;
mod transcripts;
mod warm_holds;

/// A store under test, with a way to open another connection to the same data (as another
/// process or node would), and whatever must outlive both (a folder, a schema).
pub struct Opened {
  pub store: Store,
  reopen: Box<dyn Fn() -> Store + Send + Sync>,
  _keep: Box<dyn std::any::Any + Send + Sync>,
}

impl Opened {
  /// Another connection to the same store.
  pub fn other(&self) -> Store {
    (self.reopen)()
  }
}

/// A SQLite file in a folder of its own.
fn sqlite() -> Opened {
  let dir = tempfile::tempdir().unwrap();
  let path = dir.path().join("s.db");
  let store = Store::open(&path).unwrap();
  Opened { store, reopen: Box::new(move || Store::open(&path).unwrap()), _keep: Box::new(dir) }
}

/// A PostgreSQL schema of its own in the test database, dropped afterwards.
fn postgres() -> Opened {
  let url = std::env::var("CSM_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
    panic!("this test needs PostgreSQL and CSM_TEST_DATABASE_URL is not set (cargo test --test conformance -- --include-ignored)")
  });
  let schema = format!("csm_test_{}", uuid::Uuid::new_v4().simple());
  let store = Store::connect(&url, &schema).unwrap();
  let drop_schema = DropSchema { url: url.clone(), schema: schema.clone() };
  Opened { store, reopen: Box::new(move || Store::connect(&url, &schema).unwrap()), _keep: Box::new(drop_schema) }
}

/// Drops a test schema when it goes (after the stores: `Opened` drops its store first).
struct DropSchema {
  url: String,
  schema: String,
}

impl Drop for DropSchema {
  fn drop(&mut self) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
    let _ = rt.block_on(async {
      let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await?;
      tokio::spawn(conn);
      client.batch_execute(&sql).await
    });
  }
}

/// Every check, on one backend.
macro_rules! suite {
  ($backend:ident, $open:path $(, #[$attr:meta])?) => {
    mod $backend {
      use super::*;
      $(#[$attr])?
      #[test]
      fn sessions_are_per_user_and_round_trip() {
        sessions::round_trip(&$open());
      }
      $(#[$attr])?
      #[test]
      fn get_or_create_and_start_fresh() {
        sessions::get_or_create_and_start_fresh(&$open());
      }
      $(#[$attr])?
      #[test]
      fn cleanup_touches_only_idle_sessions_of_the_caller() {
        sessions::cleanup(&$open());
      }
      $(#[$attr])?
      #[test]
      fn one_lease_per_session_and_task_ends_update_totals_atomically() {
        leases::one_lease_and_totals(&$open());
      }
      $(#[$attr])?
      #[test]
      fn a_lease_kept_while_the_cli_exits_holds_the_next_task_but_not_deletion() {
        leases::kept_after_end(&$open());
      }
      $(#[$attr])?
      #[test]
      fn a_lease_kept_while_the_cli_exits_is_handed_to_the_same_owners_next_task() {
        leases::hand_over(&$open());
      }
      $(#[$attr])?
      #[test]
      fn a_start_reads_what_the_run_needs_next_and_says_who_holds_the_session() {
        leases::start_task(&$open());
      }
      $(#[$attr])?
      #[test]
      fn a_new_session_is_stored_with_its_first_start_and_a_used_id_starts_nothing() {
        leases::create_and_start(&$open());
      }
      $(#[$attr])?
      #[test]
      fn a_task_end_stores_its_last_lines_and_events_with_it_and_logs_its_end_only_if_recorded() {
        leases::end_with(&$open());
      }
      $(#[$attr])?
      #[test]
      fn a_renewed_lease_keeps_a_second_owner_out_and_a_lapsed_one_lets_it_in() {
        leases::renewal(&$open());
      }
      $(#[$attr])?
      #[test]
      fn tasks_of_dead_processes_are_interrupted() {
        leases::recovery(&$open());
      }
      $(#[$attr])?
      #[test]
      fn a_task_end_remembers_the_window_and_the_compactions() {
        meter::window_and_compactions(&$open());
      }
      $(#[$attr])?
      #[test]
      fn transcripts_are_kept_fenced_or_absent_by_type() {
        transcripts::check(&$open());
      }
      $(#[$attr])?
      #[test]
      fn the_total_cap_counts_live_leases_of_every_connection_and_is_taken_atomically() {
        let o = $open();
        let ids: Vec<String> = (0..8).map(|_| fixtures::id()).collect();
        for id in &ids {
          o.store.create_session(&fixtures::new_session(id, "u", "p")).wait().unwrap();
        }
        total_cap::check(&o.store, &ids, || o.other());
      }
      $(#[$attr])?
      #[test]
      fn the_inbox_forwards_answers_and_messages_to_the_watched_running_task_only() {
        let o = $open();
        let sid = fixtures::id();
        o.store.create_session(&fixtures::new_session(&sid, "u", "p")).wait().unwrap();
        inbox::check(&o.store, &sid, || o.other());
      }
      $(#[$attr])?
      #[test]
      fn warm_holds_count_other_managers_cli_until_released_or_expired() {
        let o = $open();
        let sid = fixtures::id();
        o.store.create_session(&fixtures::new_session(&sid, "u", "p")).wait().unwrap();
        warm_holds::check(&o.store, &sid, || o.other());
      }
      $(#[$attr])?
      #[test]
      fn branch_points_round_trip_and_a_run_clears_only_the_point_it_used() {
        let o = $open();
        branches::check(&o.store, || o.other());
      }
      $(#[$attr])?
      #[test]
      fn spend_caps_admit_a_call_only_when_its_reserve_fits_and_the_ledger_sums_what_was_settled() {
        let o = $open();
        budgets::check(&o.store, "alice", || o.other());
      }
      $(#[$attr])?
      #[test]
      fn the_event_log_numbers_each_session_s_events_without_gaps_and_stop_requests_mark_the_running_task() {
        let o = $open();
        let (a, b) = (fixtures::id(), fixtures::id());
        o.store.create_session(&fixtures::new_session(&a, "u", "p")).wait().unwrap();
        o.store.create_session(&fixtures::new_session(&b, "u", "p")).wait().unwrap();
        events::check(&o.store, &a, &b, || o.other());
      }
    }
  };
}

suite!(sqlite, super::sqlite);
suite!(postgres, super::postgres, #[ignore = "needs PostgreSQL: CSM_TEST_DATABASE_URL=postgresql://… cargo test --test conformance -- --include-ignored"]);

fn main() {
  napi_build::setup();
  // tests/store_pg.rs: its tests are `ignored` (reported as skipped, with the reason) unless
  // CSM_TEST_DATABASE_URL names a database when they are built.
  println!("cargo::rustc-check-cfg=cfg(csm_pg_tests)");
  println!("cargo::rerun-if-env-changed=CSM_TEST_DATABASE_URL");
  if std::env::var("CSM_TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
    println!("cargo::rustc-cfg=csm_pg_tests");
  }
}

//! `countTokens` / `countTokensAsync`, with the fast path that reads short strings straight from
//! V8 (every raw `napi_*` call of the binding is here).

use napi_derive::napi;

use napi::bindgen_prelude::*;
use serde_json::Value;

use super::*;

/// Counts tokens with tiktoken (`o200k_base` by default, or `cl100k_base`). Claude's own
/// tokenizer is not public: treat the count as an estimate of Claude tokens. The encoding can be
/// given as a string, `countTokens(text, 'cl100k_base')`, the fastest form for short texts, or as
/// `{ encoding }`, whose keys are checked. A text over 64 MiB (of UTF-8, or 64 Mi UTF-16 code
/// units) throws `INVALID_ARGUMENT`.
#[napi(ts_args_type = "text: string, options?: 'o200k_base' | 'cl100k_base' | { encoding?: 'o200k_base' | 'cl100k_base' }")]
pub fn count_tokens(env: Env, text: Unknown<'_>, options: Option<Unknown<'_>>) -> napi::Result<u32> {
  // Fast path (a string, no options or only `encoding`): the text goes from V8 straight into a
  // UTF-8 buffer in one pass, with no intermediate JSON value or copy.
  if let Some(enc) = fast_encoding(&env, options) {
    // SAFETY: `env` and `text` are this synchronous N-API call's own, used on the JavaScript
    // thread before it returns, so the raw env and handle are live throughout.
    if let Some(n) = unsafe { with_js_str(env.raw(), text.raw(), |s| sync(&env, || Ok(core_tokens::count(s, enc) as u32))) } {
      return n.unwrap_or_else(|e| Err(js_error(&env, e)));
    }
  }
  // SAFETY: as above: this call's live env and `text` handle, on the JavaScript thread.
  if let Some(e) = unsafe { text_too_long(env.raw(), text.raw()) } {
    return Err(js_error(&env, e));
  }
  let text = js_value(&env, "text", Some(text));
  let options = js_value(&env, "options", options);
  sync(&env, || {
    let text = string_arg("text", text?)?;
    let enc = encoding_of(options?)?;
    Ok(core_tokens::count(&text, enc) as u32)
  })
}

/// `countTokens` off the JavaScript thread, for large texts: the promise settles with the count.
/// A text over 64 MiB rejects with `INVALID_ARGUMENT` before anything is copied.
#[napi(
  ts_args_type = "text: string, options?: 'o200k_base' | 'cl100k_base' | { encoding?: 'o200k_base' | 'cl100k_base' }",
  ts_return_type = "Promise<number>"
)]
pub fn count_tokens_async<'e>(env: &'e Env, text: Unknown<'e>, options: Option<Unknown<'e>>) -> napi::Result<PromiseRaw<'e, u32>> {
  if let Some(enc) = fast_encoding(env, options) {
    // SAFETY: `env` and `text` are this synchronous N-API call's own ('e), used on the
    // JavaScript thread before it returns, so the raw env and handle are live.
    match unsafe { js_string_len16(env.raw(), text.raw()) } {
      // A short text is counted at once (faster than a trip to another thread and back) and the
      // promise is returned already resolved.
      Some(len) if len <= ASYNC_INLINE_MAX_UTF16 => {
        // SAFETY: as above: this call's live env and `text` handle, on the JavaScript thread.
        if let Some(Ok(Ok(n))) = unsafe { with_js_str(env.raw(), text.raw(), |s| sync(env, || Ok(core_tokens::count(s, enc) as u32))) } {
          return PromiseRaw::resolve(env, n);
        }
      }
      Some(_) => {
        // SAFETY: as above; the text is copied out (`to_owned`) before the buffer is freed, and
        // only the owned `String` goes to the other thread.
        match unsafe { with_js_str(env.raw(), text.raw(), |s| s.to_owned()) } {
          Some(Ok(text)) => return promise(env, async move { count_blocking(text, enc).await }, |n| n as u32),
          Some(Err(e)) => return PromiseRaw::reject(env, js_error(env, e)),
          None => {}
        }
      }
      None => {}
    }
  }
  // SAFETY: this call's live env and `text` handle, on the JavaScript thread.
  if let Some(e) = unsafe { text_too_long(env.raw(), text.raw()) } {
    return PromiseRaw::reject(env, js_error(env, e));
  }
  let text = js_value(env, "text", Some(text));
  let options = js_value(env, "options", options);
  promise(
    env,
    async move {
      let text = string_arg("text", text?)?;
      let enc = encoding_of(options?)?;
      count_blocking(text, enc).await
    },
    |n| n as u32,
  )
}

/// Texts up to this many UTF-16 code units are counted by `countTokensAsync` on the calling thread.
pub(crate) const ASYNC_INLINE_MAX_UTF16: usize = 1024;

/// Longest text `countTokens` takes, in bytes of UTF-8 (64 MiB: tiktoken's cost grows faster than
/// the text, and a caller must not be able to hold a thread for minutes).
pub(crate) const MAX_TEXT_BYTES: usize = 64 * 1024 * 1024;
/// Longest text `countTokens` takes, in UTF-16 code units (JavaScript's `length`).
pub(crate) const MAX_TEXT_UTF16: usize = 64 * 1024 * 1024;

/// The error for a text over [`MAX_TEXT_UTF16`] code units or [`MAX_TEXT_BYTES`] bytes of UTF-8,
/// given its UTF-16 length; the UTF-8 length is only measured when the UTF-16 one leaves it open.
///
/// # Safety
///
/// `env` must be the live `napi_env` of the JavaScript thread this is called on, and `v` a string
/// handle valid in the currently open handle scope.
unsafe fn too_long(env: napi::sys::napi_env, v: napi::sys::napi_value, len16: usize) -> Option<CoreError> {
  let err = |what: String| Some(CoreError::invalid(format!("text is {what}; countTokens takes at most 64 MiB")));
  if len16 > MAX_TEXT_UTF16 {
    return err(format!("{len16} UTF-16 code units long"));
  }
  if len16.saturating_mul(3) <= MAX_TEXT_BYTES {
    return None; // three bytes of UTF-8 at most per code unit
  }
  let mut len8 = 0usize;
  // SAFETY: `env` and `v` are valid per this function's contract; a null buffer of size 0 only
  // asks for the length, which napi writes to the local `len8`.
  let status = unsafe { napi::sys::napi_get_value_string_utf8(env, v, std::ptr::null_mut(), 0, &mut len8) };
  if status == napi::sys::Status::napi_ok && len8 > MAX_TEXT_BYTES {
    return err(format!("{len8} bytes of UTF-8"));
  }
  None
}

/// [`too_long`] for any value: `None` for a non-string (the general path names that error).
///
/// # Safety
///
/// `env` must be the live `napi_env` of the JavaScript thread this is called on, and `v` a
/// handle valid in the currently open handle scope.
pub(crate) unsafe fn text_too_long(env: napi::sys::napi_env, v: napi::sys::napi_value) -> Option<CoreError> {
  // SAFETY: `env` and `v` are valid per this function's contract, passed on unchanged.
  let len16 = unsafe { js_string_len16(env, v) }?;
  // SAFETY: as above; `v` is a string (`js_string_len16` succeeded).
  unsafe { too_long(env, v, len16) }
}

async fn count_blocking(text: String, enc: core_tokens::Encoding) -> CoreResult<usize> {
  tokio::task::spawn_blocking(move || core_tokens::count(&text, enc))
    .await
    .map_err(|e| CoreError::internal(format!("token counting failed: {e}")))
}

/// The encoding when `options` is absent, `undefined`, `null`, `{}` or `{ encoding: <valid name> }`;
/// `None` for anything else, which the general path then validates (and rejects with its message).
pub(crate) fn fast_encoding(env: &Env, options: Option<Unknown<'_>>) -> Option<core_tokens::Encoding> {
  let Some(options) = options else { return Some(core_tokens::Encoding::O200kBase) };
  let (env, v) = (env.raw(), options.raw());
  // SAFETY: `env` and `v` are this synchronous call's own (see `fast_encoding_raw`).
  let enc = unsafe { fast_encoding_raw(env, v) };
  if enc.is_none() {
    // A getter or Proxy trap that threw: drop the exception; the general path reads the options
    // again and rejects with its message.
    // SAFETY: `env` is the live env of this call, on the JavaScript thread.
    unsafe { take_exception(env) };
  }
  enc
}

/// [`fast_encoding`] on raw handles; may leave a JavaScript exception pending when it answers `None`.
///
/// # Safety
///
/// `env` must be the live `napi_env` of the JavaScript thread this is called on, and `v` a
/// handle valid in the currently open handle scope (e.g. both from the N-API call being served).
unsafe fn fast_encoding_raw(env: napi::sys::napi_env, v: napi::sys::napi_value) -> Option<core_tokens::Encoding> {
  use napi::sys;
  let ok = |s: sys::napi_status| (s == sys::Status::napi_ok).then_some(());
  // SAFETY: `env` is the live env of the JavaScript thread and `v` a handle in the open scope
  // (this function's contract), e.g. the `options` argument of the call being served; `keys`,
  // `k` and `val` are handles just returned by successful napi calls in the same scope; every
  // out-pointer is a `&mut` to a local of the type napi writes; and `small_str` gets a local
  // array whose length is the size it passes on.
  unsafe {
    let mut t = 0;
    ok(sys::napi_typeof(env, v, &mut t))?;
    match t {
      sys::ValueType::napi_undefined | sys::ValueType::napi_null => return Some(core_tokens::Encoding::O200kBase),
      // The shorthand `countTokens(text, 'cl100k_base')`: one napi call, no keys to check.
      sys::ValueType::napi_string => return core_tokens::Encoding::parse(Some(small_str(env, v, &mut [0u8; 32])?)).ok(),
      sys::ValueType::napi_object => {}
      _ => return None,
    }
    let mut is_array = false;
    ok(sys::napi_is_array(env, v, &mut is_array))?;
    if is_array {
      return None;
    }
    let mut keys = std::ptr::null_mut();
    // Own enumerable string keys only, as `to_json` reads them (nothing inherited).
    ok(sys::napi_get_all_property_names(
      env,
      v,
      sys::KeyCollectionMode::own_only,
      sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
      sys::KeyConversion::numbers_to_strings,
      &mut keys,
    ))?;
    let mut n = 0u32;
    ok(sys::napi_get_array_length(env, keys, &mut n))?;
    match n {
      0 => Some(core_tokens::Encoding::O200kBase),
      1 => {
        let mut k = std::ptr::null_mut();
        ok(sys::napi_get_element(env, keys, 0, &mut k))?;
        if small_str(env, k, &mut [0u8; 16])? != "encoding" {
          return None;
        }
        let mut val = std::ptr::null_mut();
        ok(sys::napi_get_property(env, v, k, &mut val))?;
        // Not a string (`undefined` included): the general path decides.
        core_tokens::Encoding::parse(Some(small_str(env, val, &mut [0u8; 32])?)).ok()
      }
      _ => None,
    }
  }
}

/// A short JavaScript string read in one call into `buf`; `None` for a non-string or one that
/// does not fit (which then matches nothing a caller looks for).
///
/// # Safety
///
/// `env` must be the live `napi_env` of the JavaScript thread this is called on, and `v` a
/// handle valid in the currently open handle scope (e.g. both from the N-API call being served).
pub(crate) unsafe fn small_str(env: napi::sys::napi_env, v: napi::sys::napi_value, buf: &mut [u8]) -> Option<&str> {
  let mut written = 0usize;
  // SAFETY: `env` and `v` are valid per this function's contract; `buf` is a writable slice of
  // exactly `buf.len()` bytes, the size passed, so napi writes within it; `written` is a local.
  let status = unsafe { napi::sys::napi_get_value_string_utf8(env, v, buf.as_mut_ptr().cast(), buf.len(), &mut written) };
  if status != napi::sys::Status::napi_ok || written + 1 >= buf.len() {
    return None;
  }
  std::str::from_utf8(&buf[..written]).ok()
}

/// The length of a JavaScript string in UTF-16 code units (O(1)), or `None` for a non-string.
///
/// # Safety
///
/// `env` must be the live `napi_env` of the JavaScript thread this is called on, and `v` a
/// handle valid in the currently open handle scope (e.g. both from the N-API call being served).
pub(crate) unsafe fn js_string_len16(env: napi::sys::napi_env, v: napi::sys::napi_value) -> Option<usize> {
  use napi::sys;
  // Fails with `napi_string_expected` for anything but a string: no separate type check needed.
  let mut len = 0usize;
  // SAFETY: `env` and `v` are valid per this function's contract; a null buffer of size 0 only
  // asks for the length, which napi writes to the local `len`.
  let status = unsafe { sys::napi_get_value_string_utf16(env, v, std::ptr::null_mut(), 0, &mut len) };
  (status == sys::Status::napi_ok).then_some(len)
}

/// Calls `f` with a JavaScript string as UTF-8 (lone surrogates become U+FFFD, as `TextEncoder`
/// has them), converted in one pass into a stack buffer for short strings; `None` for a non-string,
/// `Some(Err)` for a text over the size limit ([`MAX_TEXT_BYTES`], [`MAX_TEXT_UTF16`]), found
/// before anything is copied. A UTF-16 code unit never takes more than 3 bytes of UTF-8, so
/// `3 × length` always suffices.
///
/// # Safety
///
/// `env` must be the live `napi_env` of the JavaScript thread this is called on, and `v` a
/// handle valid in the currently open handle scope (e.g. both from the N-API call being served).
pub(crate) unsafe fn with_js_str<R>(
  env: napi::sys::napi_env,
  v: napi::sys::napi_value,
  f: impl FnOnce(&str) -> R,
) -> Option<CoreResult<R>> {
  use napi::sys;
  // SAFETY: `env` and `v` are valid per this function's contract, passed on unchanged.
  let len16 = unsafe { js_string_len16(env, v) }?;
  if len16 > MAX_TEXT_BYTES / 3 {
    // SAFETY: as above; `v` is a string (`js_string_len16` succeeded).
    if let Some(e) = unsafe { too_long(env, v, len16) } {
      return Some(Err(e));
    }
  }
  let cap = len16 * 3 + 1;
  let mut stack = std::mem::MaybeUninit::<[u8; 2048]>::uninit();
  let mut heap = Vec::new();
  let buf: *mut u8 = if cap <= 2048 {
    stack.as_mut_ptr().cast()
  } else {
    heap.reserve_exact(cap);
    heap.as_mut_ptr()
  };
  let mut written = 0usize;
  // SAFETY: `env` and `v` are valid per this function's contract; `buf` points to at least `cap`
  // writable bytes (the 2048-byte stack array when `cap <= 2048`, else the heap allocation just
  // reserved with capacity `cap`), the size passed, so napi writes within it; `written` is a local.
  let status = unsafe { sys::napi_get_value_string_utf8(env, v, buf.cast(), cap, &mut written) };
  if status != sys::Status::napi_ok {
    return None;
  }
  // SAFETY: napi succeeded and initialised the first `written` (< `cap`) bytes at `buf`, which
  // stay allocated and unaliased (`stack` and `heap` are not touched again) until this returns.
  let bytes = unsafe { std::slice::from_raw_parts(buf, written) };
  Some(Ok(match std::str::from_utf8(bytes) {
    Ok(s) => f(s),
    Err(_) => f(&String::from_utf8_lossy(bytes)),
  }))
}

pub(crate) fn encoding_of(options: Value) -> CoreResult<core_tokens::Encoding> {
  if let Value::String(name) = &options {
    return core_tokens::Encoding::parse(Some(name));
  }
  #[derive(serde::Deserialize, Default)]
  #[serde(deny_unknown_fields)]
  struct Opts {
    encoding: Option<String>,
  }
  let o: Opts = parse_optional("countTokens options", options)?;
  core_tokens::Encoding::parse(o.encoding.as_deref())
}

//! Mounts the app; everything else is in the library.

fn main() {
    console_error_panic_hook::set_once();
    // The Evaluate view's worker runs this module too; it has no page to mount.
    if web_sys::window().is_none() {
        return;
    }
    leptos::mount::mount_to_body(tpv_web::App);
}

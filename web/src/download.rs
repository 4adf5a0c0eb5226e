//! Downloads from the page: bytes as a file, and a figure (SVG) as the SVG itself or as a PNG
//! drawn at twice its size through a canvas.

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

fn document() -> Result<web_sys::Document, String> {
    web_sys::window()
        .and_then(|w| w.document())
        .ok_or_else(|| "no document".to_owned())
}

/// Clicks a temporary link to `href` that downloads as `name`.
fn save(href: &str, name: &str) -> Result<(), String> {
    let a: web_sys::HtmlAnchorElement = document()?
        .create_element("a")
        .map_err(|e| format!("{e:?}"))?
        .dyn_into()
        .map_err(|_| "not an anchor")?;
    a.set_href(href);
    a.set_download(name);
    a.click();
    Ok(())
}

/// Starts a download of `bytes` as `name`.
pub fn bytes(name: &str, bytes: &[u8], mime: &str) -> Result<(), String> {
    let array = js_sys::Uint8Array::from(bytes);
    let parts = js_sys::Array::of1(&array.buffer());
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type(mime);
    let blob =
        web_sys::Blob::new_with_buffer_source_sequence_and_options(&parts, &opts).map_err(|e| format!("{e:?}"))?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(|e| format!("{e:?}"))?;
    save(&url, name)?;
    let _ = web_sys::Url::revoke_object_url(&url);
    Ok(())
}

/// The `width` and `height` of an SVG's root element.
fn svg_size(svg: &str) -> Option<(f64, f64)> {
    let root = &svg[..svg.find('>')?];
    let attr = |k: &str| -> Option<f64> {
        let start = root.find(&format!(" {k}=\""))? + k.len() + 3;
        root[start..start + root[start..].find('"')?].parse().ok()
    };
    Some((attr("width")?, attr("height")?))
}

/// Starts a download of a figure as `NAME.svg` (`png`: as `NAME.png`, drawn at twice its size).
pub fn figure(svg: &str, name: &str, png: bool) -> Result<(), String> {
    if !png {
        return bytes(&format!("{name}.svg"), svg.as_bytes(), "image/svg+xml");
    }
    let (w, h) = svg_size(svg).ok_or("the figure has no size")?;
    let img = web_sys::HtmlImageElement::new().map_err(|e| format!("{e:?}"))?;
    let loaded = img.clone();
    let name = format!("{name}.png");
    let on_load = Closure::once(move || {
        let draw = || -> Result<(), String> {
            let canvas: web_sys::HtmlCanvasElement = document()?
                .create_element("canvas")
                .map_err(|e| format!("{e:?}"))?
                .dyn_into()
                .map_err(|_| "not a canvas")?;
            canvas.set_width((2.0 * w) as u32);
            canvas.set_height((2.0 * h) as u32);
            let ctx: web_sys::CanvasRenderingContext2d = canvas
                .get_context("2d")
                .map_err(|e| format!("{e:?}"))?
                .ok_or("no 2d context")?
                .dyn_into()
                .map_err(|_| "not a 2d context")?;
            ctx.scale(2.0, 2.0).map_err(|e| format!("{e:?}"))?;
            ctx.draw_image_with_html_image_element(&loaded, 0.0, 0.0)
                .map_err(|e| format!("{e:?}"))?;
            save(
                &canvas
                    .to_data_url_with_type("image/png")
                    .map_err(|e| format!("{e:?}"))?,
                &name,
            )
        };
        if let Err(e) = draw() {
            web_sys::console::error_1(&e.into());
        }
    });
    img.set_onload(Some(on_load.as_ref().unchecked_ref()));
    on_load.forget();
    let src = format!("data:image/svg+xml;charset=utf-8,{}", js_sys::encode_uri_component(svg));
    img.set_src(&src);
    Ok(())
}

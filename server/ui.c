/* GET / (and HEAD): the web UI, one HTML page with its CSS and JavaScript inline
 * (server/ui/index.html), compiled into the binary by the Makefile as $(BUILD)/gen/ui_page.c so
 * that the server alone is all a browser needs: nothing to install, nothing fetched elsewhere. */
#include "srv.h"

/* The page talks to this server only, and renders model output and documents as text: a
 * policy that allows nothing else (no outside scripts, styles, images or connections) turns a
 * slip into an error in the browser's console rather than a leak. Inline script and style stay
 * allowed: the page is one file. */
static const char csp[] = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                          "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                          "frame-ancestors 'none'";

enum MHD_Result srv_ui_respond(srv_conn *c) {
    /* persistent: the page is a constant array, never copied or freed */
    struct MHD_Response *r = MHD_create_response_from_buffer(srv_ui_page_len, (void *)srv_ui_page,
                                                             MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Server", "kvseek");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
    /* no-cache: a browser revalidates, so an upgraded server serves its own page */
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "Content-Security-Policy", csp);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    if (atomic_load(&c->s->state) == SRV_DRAINING)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    c->status = 200;
    enum MHD_Result rc = MHD_queue_response(c->conn, 200, r);
    MHD_destroy_response(r);
    return rc;
}

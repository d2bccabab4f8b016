//! The admin web UI, on the admin listener beside `FlagAdminService`: server-rendered HTML (Jinja
//! templates, auto-escaped), a little script, no framework. Pages: features and flags (search,
//! archived flags), a page per flag (state, value, overrides, its recent audit entries) with forms
//! to change the state and to set and remove overrides, and the audit log with filters. The routes
//! are v0.6's (`/`, `/flags/{id}`, `/audit`, `/static/…`, `POST /api/flags/…`), with plain form
//! posts instead of htmx requests.
//!
//! Changes go through the same code as the CLI and the admin API ([`crate::sources::pg::admin`]):
//! values parsed against the flag's type, one transaction with its audit row, the session's token
//! name as the actor. Users log in with an admin token ([`session`]); viewers see the forms
//! disabled and are refused if they post anyway. Every form carries a CSRF token.

pub mod session;

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use minijinja::{Environment, context};
use pbflags_proto::v1::{FlagType, FlagValue};
use serde::Serialize;
use sqlx::PgPool;

use super::tokens::{Principal, Role, Tokens};
use crate::core::descriptor::type_name;
use crate::core::registry::Registry;
use crate::sources::pg::admin::{self, AdminError, AuditQuery, FlagRow, Input, StateChange};
use crate::sources::pg::values::state_name;
use session::{CSRF_COOKIE, SESSION_COOKIE, Sessions, check_csrf, cookie, set_cookie};

/// The banner naming the environment (v0.6's `--env-name` / `--env-color`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Banner {
    /// The environment's name, e.g. `production`.
    pub name: String,
    /// A CSS colour: `#rgb`, `#rrggbb` or a colour name.
    pub color: String,
}

impl Banner {
    /// The banner for `name`; without a colour one is derived from the name (red for production,
    /// amber for staging, green for development, otherwise a hue of the name's own).
    pub fn new(name: &str, color: Option<&str>) -> Result<Self, String> {
        let color = match color.map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) if css_color(c) => c.to_owned(),
            Some(c) => {
                return Err(format!(
                    "{c:?} is not a colour: use #rgb, #rrggbb or a CSS colour name"
                ));
            }
            None => derived_color(name),
        };
        Ok(Self {
            name: name.trim().to_owned(),
            color,
        })
    }
}

fn css_color(c: &str) -> bool {
    match c.strip_prefix('#') {
        Some(hex) => matches!(hex.len(), 3 | 6) && hex.chars().all(|x| x.is_ascii_hexdigit()),
        None => !c.is_empty() && c.len() <= 32 && c.chars().all(|x| x.is_ascii_alphabetic()),
    }
}

fn derived_color(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.starts_with("prod") || n.contains("live") {
        "#b91c1c".into()
    } else if n.starts_with("stag") || n.contains("preprod") {
        "#b45309".into()
    } else if n.starts_with("dev") || n.contains("local") || n.contains("test") {
        "#15803d".into()
    } else {
        let hue = name
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
            % 360;
        format!("hsl({hue} 60% 35%)")
    }
}

/// The UI's shared state.
struct Ui {
    pool: PgPool,
    registry: Arc<Registry>,
    sessions: Sessions,
    pages: Environment<'static>,
    banner: Option<Banner>,
    /// Served over TLS: cookies are `Secure`.
    secure: bool,
}

/// The built-in templates; a syntax error in one is a bug the unit tests catch.
fn pages() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, text) in [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("index.html", include_str!("templates/index.html")),
        ("flag.html", include_str!("templates/flag.html")),
        ("audit.html", include_str!("templates/audit.html")),
        ("message.html", include_str!("templates/message.html")),
    ] {
        if let Err(e) = env.add_template(name, text) {
            panic!("built-in template {name}: {e}");
        }
    }
    env
}

/// The response headers of every page: nothing runs or loads from elsewhere, no framing, no
/// caching of pages that show flag state.
fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// A flag as the pages show it.
#[derive(Debug, Serialize)]
struct FlagView {
    flag_id: String,
    name: String,
    feature_id: String,
    description: String,
    flag_type: &'static str,
    layer: String,
    global: bool,
    state: &'static str,
    value: String,
    default: String,
    overrides: i64,
    archived: bool,
    /// Values the definition lists (a hint for the form; not enforced, as in v0.6).
    choices: Vec<String>,
}

/// A value as text: `true`, `weekly`, `3`, `0.5`; an absent value is empty.
pub fn value_text(v: Option<&FlagValue>) -> String {
    use pbflags_proto::v1::flag_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(V::BoolValue(b)) => b.to_string(),
        Some(V::StringValue(s)) => s.clone(),
        Some(V::Int64Value(i)) => i.to_string(),
        Some(V::DoubleValue(d)) => d.to_string(),
    }
}

impl Ui {
    fn view(&self, row: &FlagRow) -> FlagView {
        let snapshot = self.registry.load();
        let def = snapshot.get(&row.flag_id);
        let flag_type = def.map_or(row.flag_type, |d| d.flag_type);
        let default = def.map_or(row.default_value.as_ref(), |d| d.default.as_ref());
        let mut choices: Vec<String> =
            match (flag_type, def.and_then(|d| d.supported_values.as_ref())) {
                (FlagType::Bool, _) => vec!["true".into(), "false".into()],
                (_, Some(s)) => s
                    .string_values
                    .iter()
                    .cloned()
                    .chain(s.int64_values.iter().map(i64::to_string))
                    .chain(s.double_values.iter().map(f64::to_string))
                    .collect(),
                _ => vec![],
            };
        choices.dedup();
        FlagView {
            flag_id: row.flag_id.clone(),
            name: row.display_name.clone(),
            feature_id: row.feature_id.clone(),
            description: row.description.clone(),
            flag_type: type_name(flag_type),
            global: row.layer.is_empty() || row.layer.eq_ignore_ascii_case("global"),
            layer: row.layer.clone(),
            state: row.state.map_or("DEFAULT", state_name),
            value: value_text(row.value.as_ref()),
            default: value_text(default),
            overrides: row.overrides,
            archived: row.archived,
            choices,
        }
    }

    /// Renders `page` with the context every page has (user, CSRF token, banner); sets the CSRF
    /// cookie if the browser has none yet.
    fn render(
        &self,
        status: StatusCode,
        page: &str,
        who: Option<&Principal>,
        headers: &HeaderMap,
        ctx: minijinja::Value,
    ) -> Response {
        let (csrf, fresh) = match cookie(headers, CSRF_COOKIE) {
            Some(c) => (c.to_owned(), false),
            None => (session::random_token(), true),
        };
        let common = context! {
            user => who.map(|p| context! { name => &p.name, editor => p.role == Role::Editor }),
            needs_login => self.sessions.needs_login(),
            csrf => &csrf,
            banner => minijinja::value::Serde(&self.banner),
        };
        let html = self
            .pages
            .get_template(page)
            .and_then(|t| t.render(context! { ..ctx, ..common }));
        let mut r = match html {
            Ok(html) => (status, axum::response::Html(html)).into_response(),
            Err(e) => {
                tracing::error!(page, error = %e, "admin UI page failed to render");
                (StatusCode::INTERNAL_SERVER_ERROR, "page failed to render\n").into_response()
            }
        };
        if fresh {
            self.set(&mut r, CSRF_COOKIE, &csrf, None);
        }
        r
    }

    /// Adds cookie `name` to `r` (see [`set_cookie`]).
    fn set(&self, r: &mut Response, name: &str, value: &str, max_age: Option<u64>) {
        if let Ok(v) = HeaderValue::from_str(&set_cookie(name, value, self.secure, max_age)) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    /// The refusal of a form whose CSRF token or origin is wrong; `None` if it passes.
    fn forged(
        &self,
        who: Option<&Principal>,
        headers: &HeaderMap,
        form: &HashMap<String, String>,
    ) -> Option<Response> {
        let e = check_csrf(headers, form_field(form, "csrf_token")).err()?;
        tracing::warn!(token = who.map(|p| p.name.as_str()), error = %e, "admin UI form refused");
        Some(self.message(
            StatusCode::FORBIDDEN,
            who,
            headers,
            "Refused",
            &e.to_string(),
        ))
    }

    fn message(
        &self,
        status: StatusCode,
        who: Option<&Principal>,
        headers: &HeaderMap,
        title: &str,
        text: &str,
    ) -> Response {
        self.render(
            status,
            "message.html",
            who,
            headers,
            context! { title => title, text => text },
        )
    }

    fn failure(&self, who: &Principal, headers: &HeaderMap, e: &AdminError) -> Response {
        let status = match e {
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::GlobalLayer(_) => StatusCode::CONFLICT,
            AdminError::Db(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::BadValue { .. }
            | AdminError::WrongType { .. }
            | AdminError::EntityKill(_) => StatusCode::BAD_REQUEST,
        };
        self.message(status, Some(who), headers, "Not changed", &e.to_string())
    }
}

type Shared = State<Arc<Ui>>;
type Params = Query<HashMap<String, String>>;

/// Who is calling, or the response that sends them to log in.
fn signed_in(ui: &Ui, headers: &HeaderMap, back_to: &str) -> Result<Principal, Box<Response>> {
    ui.sessions.principal(headers).ok_or_else(|| {
        let to = format!("/login?next={}", urlencode(back_to));
        Box::new(see_other(&to))
    })
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Where to go after logging in: a path on this site, never another site.
fn local_path(next: Option<&String>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.clone(),
        _ => "/".to_owned(),
    }
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

async fn index(State(ui): Shared, headers: HeaderMap, Query(q): Params) -> Response {
    let who = match signed_in(&ui, &headers, "/") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let search = q
        .get("q")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_default();
    let with_archived = q.get("archived").is_some_and(|v| v == "1" || v == "on");
    let (features, flags) = match tokio::try_join!(admin::features(&ui.pool), admin::list(&ui.pool))
    {
        Ok(x) => x,
        Err(e) => return ui.failure(&who, &headers, &e),
    };
    let matches = |f: &FlagRow| {
        search.is_empty()
            || [&f.flag_id, &f.display_name, &f.feature_id]
                .iter()
                .any(|s| s.to_lowercase().contains(&search))
    };
    let (mut live, mut archived): (Vec<FlagView>, Vec<FlagView>) = (vec![], vec![]);
    let total = flags.len();
    for f in flags.iter().filter(|f| matches(f)) {
        if f.archived {
            archived.push(ui.view(f));
        } else {
            live.push(ui.view(f));
        }
    }
    let shown = live.len();
    let groups: Vec<_> = features
        .iter()
        .filter_map(|feature| {
            let flags: Vec<&FlagView> = live
                .iter()
                .filter(|f| f.feature_id == feature.feature_id)
                .collect();
            (!flags.is_empty()).then(|| {
                context! {
                    feature_id => &feature.feature_id,
                    description => &feature.description,
                    owner => &feature.owner,
                    flags => minijinja::value::Serde(&flags),
                }
            })
        })
        .collect();
    if !with_archived {
        archived.clear();
    }
    ui.render(
        StatusCode::OK,
        "index.html",
        Some(&who),
        &headers,
        context! {
            features => groups,
            archived => minijinja::value::Serde(&archived),
            with_archived => with_archived,
            q => q.get("q").cloned().unwrap_or_default(),
            shown => shown,
            total => total,
        },
    )
}

/// What a change done through a form says on the flag's page afterwards.
fn done_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "state" => "State changed.",
        "override" => "Override set.",
        "removed" => "Override removed.",
        _ => return None,
    })
}

async fn flag_page(
    State(ui): Shared,
    headers: HeaderMap,
    Path(flag_id): Path<String>,
    Query(q): Params,
) -> Response {
    let who = match signed_in(&ui, &headers, &format!("/flags/{flag_id}")) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let done = q.get("done").and_then(|c| done_text(c));
    show_flag(&ui, &who, &headers, &flag_id, StatusCode::OK, done, None).await
}

async fn show_flag(
    ui: &Ui,
    who: &Principal,
    headers: &HeaderMap,
    flag_id: &str,
    status: StatusCode,
    done: Option<&str>,
    error: Option<String>,
) -> Response {
    let query = AuditQuery {
        flag_id: Some(flag_id.to_owned()),
        limit: 10,
        ..AuditQuery::default()
    };
    let (row, overrides, audit) = match tokio::try_join!(
        admin::get(&ui.pool, flag_id),
        admin::audit_search(&ui.pool, &query)
    ) {
        Ok(((row, overrides), audit)) => (row, overrides, audit),
        Err(e) => return ui.failure(who, headers, &e),
    };
    let overrides: Vec<_> = overrides
        .iter()
        .map(|o| {
            context! {
                entity_id => &o.entity_id,
                state => o.state.map_or("DEFAULT", state_name),
                value => value_text(o.value.as_ref()),
            }
        })
        .collect();
    ui.render(
        status,
        "flag.html",
        Some(who),
        headers,
        context! {
            flag => minijinja::value::Serde(ui.view(&row)),
            overrides => overrides,
            audit => audit.iter().map(audit_view).collect::<Vec<_>>(),
            done => done,
            error => error,
        },
    )
}

fn audit_view(r: &admin::AuditRow) -> minijinja::Value {
    context! {
        id => r.id,
        flag_id => &r.flag_id,
        action => &r.action,
        old_value => value_text(r.old_value.as_ref()),
        new_value => value_text(r.new_value.as_ref()),
        actor => &r.actor,
        created_at => &r.created_at,
    }
}

/// The audit actions v0.6 and this evaluator write.
const ACTIONS: [&str; 4] = [
    "UPDATE_STATE",
    "CREATE_OVERRIDE",
    "UPDATE_OVERRIDE",
    "REMOVE_OVERRIDE",
];

async fn audit_page(State(ui): Shared, headers: HeaderMap, Query(q): Params) -> Response {
    let who = match signed_in(&ui, &headers, "/audit") {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let field = |k: &str| {
        q.get(k)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let limit = match field("limit").map(|l| l.parse::<i64>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return ui.message(
                StatusCode::BAD_REQUEST,
                Some(&who),
                &headers,
                "Bad filter",
                "limit: a number from 1 to 1000",
            );
        }
    };
    let action = field("action");
    if let Some(a) = &action
        && !ACTIONS.contains(&a.as_str())
    {
        return ui.message(
            StatusCode::BAD_REQUEST,
            Some(&who),
            &headers,
            "Bad filter",
            &format!("action: one of {}", ACTIONS.join(", ")),
        );
    }
    let query = AuditQuery {
        flag_id: field("flag_id"),
        action,
        actor: field("actor"),
        limit,
    };
    let rows = match admin::audit_search(&ui.pool, &query).await {
        Ok(r) => r,
        Err(e) => return ui.failure(&who, &headers, &e),
    };
    ui.render(
        StatusCode::OK,
        "audit.html",
        Some(&who),
        &headers,
        context! {
            entries => rows.iter().map(audit_view).collect::<Vec<_>>(),
            actions => ACTIONS,
            filter => context! {
                flag_id => query.flag_id,
                action => query.action,
                actor => query.actor,
                limit => limit,
            },
        },
    )
}

async fn login_page(State(ui): Shared, headers: HeaderMap, Query(q): Params) -> Response {
    if !ui.sessions.needs_login() {
        return see_other("/");
    }
    ui.render(
        StatusCode::OK,
        "login.html",
        None,
        &headers,
        context! { next => local_path(q.get("next")), error => None::<String> },
    )
}

type Fields = Form<HashMap<String, String>>;

fn form_field<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map_or("", |s| s.trim())
}

async fn login(State(ui): Shared, headers: HeaderMap, Form(form): Fields) -> Response {
    if let Some(refused) = ui.forged(None, &headers, &form) {
        return refused;
    }
    let next = local_path(form.get("next"));
    match ui.sessions.login(form_field(&form, "token")) {
        Some((id, who)) => {
            tracing::info!(token = %who.name, "admin UI login");
            let mut r = see_other(&next);
            ui.set(&mut r, SESSION_COOKIE, &id, None);
            r
        }
        None => {
            tracing::warn!("admin UI login refused: the token is not valid");
            ui.render(
                StatusCode::UNAUTHORIZED,
                "login.html",
                None,
                &headers,
                context! { next => next, error => "That token is not valid." },
            )
        }
    }
}

async fn logout(State(ui): Shared, headers: HeaderMap, Form(form): Fields) -> Response {
    if let Some(refused) = ui.forged(None, &headers, &form) {
        return refused;
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        ui.sessions.logout(id);
    }
    let mut r = see_other("/login");
    ui.set(&mut r, SESSION_COOKIE, "", Some(0));
    r
}

/// The editor posting a form, or the response refusing them.
fn editor(
    ui: &Ui,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Principal, Box<Response>> {
    let Some(who) = ui.sessions.principal(headers) else {
        return Err(Box::new(ui.message(
            StatusCode::UNAUTHORIZED,
            None,
            headers,
            "Not logged in",
            "Log in with an admin token to change flags.",
        )));
    };
    if let Some(refused) = ui.forged(Some(&who), headers, form) {
        return Err(Box::new(refused));
    }
    if who.role != Role::Editor {
        tracing::warn!(token = %who.name, "admin UI change refused: a viewer token cannot change flags");
        return Err(Box::new(ui.message(
            StatusCode::FORBIDDEN,
            Some(&who),
            headers,
            "Read-only",
            &format!(
                "Token {} is a viewer; changing flags needs an editor.",
                who.name
            ),
        )));
    }
    Ok(who)
}

/// A change a form asks for.
#[derive(Debug, PartialEq)]
enum Change {
    State(StateChange),
    SetOverride {
        entity: String,
        state: pbflags_proto::v1::State,
        value: Option<Input>,
    },
    RemoveOverride {
        entity: String,
    },
}

/// Which form was posted.
#[derive(Debug, Clone, Copy)]
enum FormKind {
    State,
    SetOverride,
    RemoveOverride,
}

impl FormKind {
    /// What the flag's page says after the change (`?done=`).
    fn done(self) -> &'static str {
        match self {
            FormKind::State => "state",
            FormKind::SetOverride => "override",
            FormKind::RemoveOverride => "removed",
        }
    }
}

/// The change `form` asks for, or what is wrong with it.
fn parse_change(kind: FormKind, form: &HashMap<String, String>) -> Result<Change, String> {
    use pbflags_proto::v1::State as S;
    let entity = || match form_field(form, "entity_id") {
        "" => Err("entity_id is required".to_owned()),
        e => Ok(e.to_owned()),
    };
    let value = form_field(form, "value");
    let state = match kind {
        FormKind::RemoveOverride => return Ok(Change::RemoveOverride { entity: entity()? }),
        _ => match form_field(form, "state") {
            "ENABLED" if value.is_empty() => {
                return Err(match kind {
                    FormKind::State => "value is required to enable a flag",
                    _ => "value is required for an enabled override",
                }
                .to_owned());
            }
            "ENABLED" => S::Enabled,
            "DEFAULT" => S::Default,
            "KILLED" => S::Killed,
            "" => return Err("state is required: ENABLED, DEFAULT or KILLED".into()),
            other => return Err(format!("state {other:?} is not ENABLED, DEFAULT or KILLED")),
        },
    };
    Ok(match kind {
        FormKind::State => Change::State(match state {
            S::Enabled => StateChange::Set(value.to_owned()),
            S::Killed => StateChange::Kill,
            _ => StateChange::Default,
        }),
        _ => Change::SetOverride {
            entity: entity()?,
            value: (state == S::Enabled).then(|| Input::Text(value.to_owned())),
            state,
        },
    })
}

/// A posted form: checked (session, CSRF, role), parsed, applied by the CLI's code; then the
/// flag's page, saying what was done or why not.
async fn post_change(
    ui: Arc<Ui>,
    kind: FormKind,
    headers: HeaderMap,
    flag_id: String,
    form: HashMap<String, String>,
) -> Response {
    let who = match editor(&ui, &headers, &form) {
        Ok(p) => p,
        Err(r) => return *r,
    };
    let change = match parse_change(kind, &form) {
        Ok(c) => c,
        Err(e) => {
            return show_flag(
                &ui,
                &who,
                &headers,
                &flag_id,
                StatusCode::BAD_REQUEST,
                None,
                Some(e),
            )
            .await;
        }
    };
    let (pool, actor) = (&ui.pool, who.name.as_str());
    let done = match change {
        Change::State(c) => admin::set_state(pool, &flag_id, c, actor)
            .await
            .map(|state| {
                tracing::info!(
                    flag_id,
                    state = state_name(state),
                    actor,
                    "flag state changed in the admin UI"
                );
            }),
        Change::SetOverride {
            entity,
            state,
            value,
        } => admin::set_override_input(pool, &flag_id, &entity, state, value, actor)
            .await
            .map(drop),
        Change::RemoveOverride { entity } => admin::remove_override(pool, &flag_id, &entity, actor)
            .await
            .map(drop),
    };
    match done {
        Ok(()) => see_other(&format!("/flags/{flag_id}?done={}", kind.done())),
        Err(e) => ui.failure(&who, &headers, &e),
    }
}

/// The route of one kind of form.
fn form(kind: FormKind) -> axum::routing::MethodRouter<Arc<Ui>> {
    axum::routing::post(
        move |State(ui): Shared,
              headers: HeaderMap,
              Path(flag_id): Path<String>,
              Form(f): Fields| { post_change(ui, kind, headers, flag_id, f) },
    )
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "app.css" => (include_str!("static/app.css"), "text/css; charset=utf-8"),
        "app.js" => (
            include_str!("static/app.js"),
            "text/javascript; charset=utf-8",
        ),
        "favicon.svg" => (include_str!("static/favicon.svg"), "image/svg+xml"),
        _ => return (StatusCode::NOT_FOUND, "no such file\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Longest form body accepted.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The UI's routes; `tokens` as the admin API's, `secure` when served over TLS.
pub fn router(
    pool: PgPool,
    registry: Arc<Registry>,
    tokens: Option<Arc<Tokens>>,
    banner: Option<Banner>,
    secure: bool,
) -> axum::Router {
    use axum::routing::{get, post};
    let ui = Arc::new(Ui {
        pool,
        registry,
        sessions: Sessions::new(tokens),
        pages: pages(),
        banner,
        secure,
    });
    axum::Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/flags/{*flag_id}", get(flag_page))
        .route("/audit", get(audit_page))
        .route("/api/flags/state/{*flag_id}", form(FormKind::State))
        .route(
            "/api/flags/overrides/{*flag_id}",
            form(FormKind::SetOverride),
        )
        .route(
            "/api/flags/remove-override/{*flag_id}",
            form(FormKind::RemoveOverride),
        )
        .route("/static/{name}", get(asset))
        .route(
            "/favicon.ico",
            get(|| async { see_other("/static/favicon.svg") }),
        )
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(|r: Response| async move {
            harden(r)
        }))
        .with_state(ui)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_templates_parse() {
        let env = pages();
        for name in [
            "login.html",
            "index.html",
            "flag.html",
            "audit.html",
            "message.html",
        ] {
            assert!(env.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn forms_parse_into_changes_with_errors_naming_the_field() {
        use pbflags_proto::v1::State as S;
        let f = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            parse_change(
                FormKind::State,
                &f(&[("state", "ENABLED"), ("value", " 7 ")])
            ),
            Ok(Change::State(StateChange::Set("7".into())))
        );
        assert_eq!(
            parse_change(FormKind::State, &f(&[("state", "KILLED"), ("value", "x")])),
            Ok(Change::State(StateChange::Kill))
        );
        assert_eq!(
            parse_change(
                FormKind::SetOverride,
                &f(&[("state", "DEFAULT"), ("entity_id", "u1")])
            ),
            Ok(Change::SetOverride {
                entity: "u1".into(),
                state: S::Default,
                value: None
            })
        );
        assert_eq!(
            parse_change(FormKind::RemoveOverride, &f(&[("entity_id", "u1")])),
            Ok(Change::RemoveOverride {
                entity: "u1".into()
            })
        );
        for (kind, form, says) in [
            (
                FormKind::State,
                f(&[("state", "ENABLED")]),
                "value is required to enable",
            ),
            (FormKind::State, f(&[]), "state is required"),
            (
                FormKind::State,
                f(&[("state", "ON")]),
                "\"ON\" is not ENABLED",
            ),
            (
                FormKind::SetOverride,
                f(&[("state", "ENABLED"), ("value", "1")]),
                "entity_id is required",
            ),
            (
                FormKind::SetOverride,
                f(&[("state", "ENABLED"), ("entity_id", "u")]),
                "for an enabled override",
            ),
            (FormKind::RemoveOverride, f(&[]), "entity_id is required"),
        ] {
            let e = parse_change(kind, &form).unwrap_err();
            assert!(e.contains(says), "{kind:?} {form:?}: {e}");
        }
    }

    #[test]
    fn banners_take_safe_colours_only() {
        assert_eq!(Banner::new("prod-eu", None).unwrap().color, "#b91c1c");
        assert_eq!(Banner::new("staging", None).unwrap().color, "#b45309");
        assert!(Banner::new("qa", None).unwrap().color.starts_with("hsl("));
        assert_eq!(Banner::new("x", Some("#0af")).unwrap().color, "#0af");
        assert_eq!(Banner::new("x", Some("teal")).unwrap().color, "teal");
        for bad in ["#12", "red;background:url(x)", "#ggg", "a b"] {
            assert!(
                Banner::new("x", Some(bad))
                    .unwrap_err()
                    .contains("not a colour")
            );
        }
    }

    #[test]
    fn after_login_only_local_paths() {
        for (next, to) in [
            (Some("/flags/a/1"), "/flags/a/1"),
            (Some("//evil.example/"), "/"),
            (Some("https://evil.example/"), "/"),
            (Some("/\\evil.example"), "/"),
            (None, "/"),
        ] {
            assert_eq!(local_path(next.map(str::to_owned).as_ref()), to);
        }
        assert_eq!(urlencode("/flags/a b?x"), "/flags/a%20b%3Fx");
    }
}

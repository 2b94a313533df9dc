// Diesel table definitions, matching migrations/.

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        email_key -> Text,
        password_hash -> Text,
        locale -> Text,
        verified_at -> Nullable<Timestamptz>,
        verify_epoch -> Int4,
        verification_sent_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        password_epoch -> Int4,
        email_epoch -> Int4,
        verify_code_hash -> Nullable<Bytea>,
        verify_code_attempts -> Int4,
        verify_binding -> Nullable<Bytea>,
        verify_code_wrong_total -> Int4,
    }
}

diesel::table! {
    outbox (id) {
        id -> Uuid,
        routing_key -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        last_error -> Nullable<Text>,
        user_id -> Nullable<Uuid>,
        seq -> Int8,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        id -> Uuid,
        last_seen_at -> Timestamptz,
        user_agent -> Nullable<Text>,
    }
}

diesel::table! {
    rate_limits (key) {
        key -> Bytea,
        tat -> Timestamptz,
        step -> Interval,
        span -> Interval,
        allowed -> Bool,
    }
}

diesel::joinable!(sessions -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(users, outbox, sessions);

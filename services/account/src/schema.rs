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
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
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

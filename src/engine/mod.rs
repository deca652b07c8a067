//! The sync engine: catalog (collections, views, indexes, relaxations, DDL), copy and
//! change-event application.

pub mod catalog;

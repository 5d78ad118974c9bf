//! End-to-end tests against real usm servers on 127.0.0.1 with sled stores in temp dirs.
//! One test binary with modules links once.

#![allow(clippy::unwrap_used)] // helpers of tests panic on failure, like the tests

mod attachments;
mod automations;
mod bad_input;
mod catalog;
mod cli;
mod cluster;
mod concurrency;
mod console;
mod controls;
mod conversation;
mod crash;
mod crash_cycles;
mod directory;
mod frameworks;
mod inbound;
mod isolation;
mod kpis;
mod languages;
mod limits;
mod module_admin;
mod modules;
mod notifications;
mod overload;
mod pipelines;
mod plugins;
mod postgres;
mod process;
mod records;
mod restart;
mod routes;
mod scoping;
mod search;
mod security;
mod service_catalog;
mod sla;
mod strict_input;
mod tmf621;
mod webhook_policy;
mod webhooks;
mod workflows;

create or replace function pg_temp.wait_sum(target pg_lsn) returns interval language plpgsql as $$
declare t0 timestamptz := clock_timestamp();
begin
  loop
    exit when (select summarized_lsn from pg_get_wal_summarizer_state()) >= target;
    perform pg_sleep(0.02);
  end loop;
  return clock_timestamp() - t0;
end $$;
select pg_backup_start('t', true) as lsn \gset
select :'lsn' as start_lsn, pg_temp.wait_sum(:'lsn') as waited, (select summarized_lsn from pg_get_wal_summarizer_state());
select lsn from pg_backup_stop(false);

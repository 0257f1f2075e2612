SELECT hub.watch('guarantees', 'guarantee');
SELECT hub.watch('attendance', 'attendance');
SELECT hub.watch('votes', 'vote');

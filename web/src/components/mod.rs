pub mod compose;
pub mod curves;
pub mod file_list;
pub mod file_picker;
pub mod runs;
pub mod similarity;

pub mod file_list;
pub mod file_picker;
